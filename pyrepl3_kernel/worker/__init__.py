"""The worker process: runs user code for one kernel.

Started as ``python -m pyrepl3_kernel.worker``.

Nothing here is imported by the kernel process.
"""
