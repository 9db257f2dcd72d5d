"""Build script: the C encoder and ring (csrc/) as a cffi API-mode extension.

The extension is optional. When it cannot be compiled (no C compiler, odd platform) the
install still succeeds and isstreamer runs on its orjson / pure-Python fallback.
"""

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C extension cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the fallback"
            self._warn(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        sys.stderr.write(
            "WARNING: isstreamer's C extension could not be built (%s); "
            "the orjson/pure-Python fallback will be used.\n" % (exc,)
        )


setup(
    cffi_modules=["isstreamer/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
