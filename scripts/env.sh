# Sourced by setup.sh, bench.sh and test.sh: which Python environment the project lives in.
#   $DEEPNETS_VENV when set (any virtualenv or conda environment: its bin/python is used and installed into);
#   else the active virtualenv or conda environment when its Python already imports torch (the torch you
#   installed for your GPU stays in use);
#   else .venv in the checkout (created by setup.sh).
# Sets VENV (the environment's folder) and PY (its Python).
active=${VIRTUAL_ENV:-${CONDA_PREFIX:-}}
if [ -n "${DEEPNETS_VENV:-}" ]; then
  VENV=$DEEPNETS_VENV
elif [ -n "$active" ] && "$active/bin/python" -c "import torch" 2>/dev/null; then
  VENV=$active
else
  VENV=.venv
fi
PY=$VENV/bin/python
