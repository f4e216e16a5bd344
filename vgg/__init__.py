"""The VGG classroom library: models, data, LR range test, training, jobs and runs.

Never imports streamlit; pages in ``pages/`` are thin UI over this package.
"""
