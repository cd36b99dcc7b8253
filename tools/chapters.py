"""Import a chapter's definitions straight from its notebook (tests and tools use this name).

The loader lives in the library, :mod:`nnbook.chapters`, so that a chapter can use another
chapter's definitions too (chapter 27 does); see there.

    ch04 = load_chapter("04")          # or load_chapter("04_convolution_lenet")
    ch04.conv2d(x, w)                  # the notebook's own function
"""

from nnbook.chapters import TAG, definition_cells, load_chapter, notebook_path, notebooks_dir

__all__ = ["TAG", "definition_cells", "load_chapter", "notebook_path", "notebooks_dir"]
