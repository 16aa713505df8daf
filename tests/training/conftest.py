from tests.export.conftest import _logging_to_real_stderr  # noqa: F401 - autouse, shared
