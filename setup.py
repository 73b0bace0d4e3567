"""Build the compiled parts of maitred: the admission core, the message heads
and the HTTP/1.1 engine (proxy/*.pyx)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("proxy._core", ["proxy/_core.pyx"], extra_compile_args=["-O2"]),
    Extension("proxy._heads", ["proxy/_heads.pyx"], extra_compile_args=["-O2"]),
    Extension("proxy._http", ["proxy/_http.pyx"], extra_compile_args=["-O2"]),
    # The data path: plain Python, typed by the .pxd beside each file.
    Extension("proxy.target", ["proxy/target.py"], extra_compile_args=["-O2"]),
    Extension("proxy.upstream", ["proxy/upstream.py"], extra_compile_args=["-O2"]),
    Extension("proxy.client", ["proxy/client.py"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            # The .py modules' annotations document; their .pxd types them.
            "annotation_typing": False,
        },
    ),
)
