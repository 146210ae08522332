"""An in-process ComfyUI worker for RunPod serverless.

One module per step of a job: ``request`` (parse) -> ``inputs`` (images into
ComfyUI's input folder) -> ``workflow`` (path normalisation) -> ``runtime``
(ComfyUI, in-process) -> ``outputs`` (files the workflow made) -> ``delivery``
(base64 or S3). ``worker`` runs those steps for one job; ``handler.py`` hands
RunPod's jobs to it.
"""

__version__ = "0.1.0"
