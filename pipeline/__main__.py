import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from pipeline.console import quiet_start_up  # noqa: E402 - after the logging setting above

with quiet_start_up():
    from pipeline.run import main  # noqa: E402

sys.exit(main())
