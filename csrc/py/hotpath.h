/* The CPython binding of the hot path (log(), a series handle, a flat dict): see hotpath.c.
 * Compiled only into the extension module (it needs Python.h); the portable core (csrc/, one level up)
 * knows nothing of Python. */
#ifndef ISS_HOTPATH_H
#define ISS_HOTPATH_H

/* Create the module `isstreamer._hotpath` and put it in sys.modules (takes the GIL itself: cffi
 * calls release it). 0 on success, -1 on failure (a Python error was printed). */
int iss_py_hotpath_install(void);

#endif
