# Sourced by the scripts that need the official Python SDK (PyPI `mcp`):
# sets PY_SDK_PYTHON to the interpreter of a virtual environment under
# $CACHE that has it, installing it there first when needed.
PY_SDK_VERSION=2.3.0
py_sdk() {
  local venv=$CACHE/py-sdk-$PY_SDK_VERSION
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import mcp, uvicorn" 2>/dev/null; then
    printf '[peers] installing mcp==%s (PyPI) into %s\n' "$PY_SDK_VERSION" "$venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$PY_SDK_VERSION"
  fi
  PY_SDK_PYTHON=$venv/bin/python
}
