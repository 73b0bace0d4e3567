"""Build the compiled parts of maitred: the admission core (proxy/_core.pyx)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("proxy._core", ["proxy/_core.pyx"], extra_compile_args=["-O2"]),
    Extension("proxy._http", ["proxy/_http.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
