"""Data files read at run time: the kernelspec template and logos.

The files here are symlinks to ``kernelspec/pyrepl3/`` at the repository root,
the one copy of the kernelspec; builds copy their targets into sdists and wheels.
"""
