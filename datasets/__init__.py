"""Dataset loaders, partial-label protocols and mask files, label side information.

Not installed into site-packages (it would shadow Hugging Face ``datasets``); imported from the
repository root.
"""
