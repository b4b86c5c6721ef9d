"""rnncore's team of threads as seen by threadpoolctl.

joblib, scikit-learn and others limit the native thread pools of a process with
``threadpoolctl.threadpool_limits(n)`` to avoid oversubscription. rnncore's team is such a pool: it
registers a controller here (when threadpoolctl is installed) so that those limits apply to it,
with ``user_api`` and ``internal_api`` "rnncore". The controller finds the extension module by its
file name and talks to it through two exported C functions, ``rnncore_get_num_threads`` and
``rnncore_set_num_threads``.

rnncore's OpenBLAS (``libscipy_openblas``, which threadpoolctl lists as an "openblas" pool) always
works single-threaded inside rnncore's team: a call resets it to one thread if a limit changed it.
"""

import importlib.util

_REGISTERED = False


def register():
    """Register rnncore's controller with threadpoolctl, once; returns whether it is registered."""
    global _REGISTERED
    if _REGISTERED:
        return True
    if importlib.util.find_spec("threadpoolctl") is None:
        return False
    import threadpoolctl

    if not hasattr(threadpoolctl, "LibController") or not hasattr(threadpoolctl, "register"):
        return False  # threadpoolctl older than 3.4: no custom controllers

    from . import _core

    class RnncoreController(threadpoolctl.LibController):  # type: ignore[misc]  # threadpoolctl is untyped
        user_api = "rnncore"
        internal_api = "rnncore"
        filename_prefixes = ("_core",)
        check_symbols = ("rnncore_get_num_threads", "rnncore_set_num_threads")

        def get_num_threads(self):
            return int(self.dynlib.rnncore_get_num_threads())

        def set_num_threads(self, num_threads):
            n = max(1, min(int(num_threads), _core.MAX_THREADS))
            self.dynlib.rnncore_set_num_threads(n)

        def get_version(self):
            from . import __version__
            return __version__

    threadpoolctl.register(RnncoreController)
    _REGISTERED = True
    return True
