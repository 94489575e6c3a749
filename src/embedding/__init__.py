"""Embeddings of audio of any length from an export folder: the windowing both front ends share
(windows.py), the HEAR API (hear.py). Uses models/ and data/ (the fbank), which never import each
other; `python -m src.embedding` (__main__.py, folder.py) is the command and src/s3prl_upstream the s3prl front end."""
