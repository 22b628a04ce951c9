# Custom Dataflow worker container with GPU TensorFlow (configs/dataflow-gpu.yaml).
#   docker build -t REGION-docker.pkg.dev/PROJECT/ig/worker-gpu:latest .
#   docker push REGION-docker.pkg.dev/PROJECT/ig/worker-gpu:latest
# then run with --sdk_container_image pointing at it. The Beam SDK version here must match
# the launcher's (constraints.txt pins both).
FROM apache/beam_python3.11_sdk:2.77.0

# GPU TensorFlow brings its CUDA/cuDNN wheels; Dataflow installs the NVIDIA driver
# (worker_accelerator=...;install-nvidia-driver).
COPY constraints.txt /opt/ig/constraints.txt
RUN pip install --no-cache-dir -c /opt/ig/constraints.txt "tensorflow[and-cuda]" tensorflow-hub

COPY setup.py /opt/ig/
COPY attribution /opt/ig/attribution
COPY transforms /opt/ig/transforms
COPY pipeline /opt/ig/pipeline
RUN pip install --no-cache-dir -c /opt/ig/constraints.txt /opt/ig

# One model per GPU: grow GPU memory on demand instead of grabbing it all up front, so a
# second SDK process (if any) can still start; with no_use_multiple_sdk_containers there is
# one process per VM and the model is loaded once per GPU.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true

ENTRYPOINT ["/opt/apache/beam/boot"]
