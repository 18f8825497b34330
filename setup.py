"""The one compiled part: an optional C extension (see README, "Sending no PII").

Everything else is in pyproject.toml. The extension is optional: where no C compiler is
found the build goes on without it and the [privacy] step uses its Python rewrite.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backfill.privacy._splice",
            ["backfill/privacy/_splice.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
