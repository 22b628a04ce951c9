import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from pipeline.console import quiet_start_up  # noqa: E402 - after the logging setting above

with quiet_start_up():
    from pipeline.run import main  # noqa: E402

# TensorFlow and Beam leave about a million long-lived objects behind their imports: frozen,
# the garbage collector stops walking them again (each full collection took 0.2 s here)
gc.freeze()

sys.exit(main())
