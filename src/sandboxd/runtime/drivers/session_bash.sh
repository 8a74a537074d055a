# sandboxd session driver for Bash: the program of a persistent sandbox (runtime/drivers).
#
# One shell for every request: each cell runs with `eval` in this shell (not a subshell), so
# variables, functions, aliases, `cd`, options and `exec` redirections persist; its exit status
# is `$?` after it. `exit` in a cell ends the shell, and with it the session (so does a failing
# command under `set -e`). A cell's stdin is /dev/null.
#
# The driver's own descriptors: the requests at 50, copies of the original stdout and stderr
# at 51 and 52 (the markers go there, so a cell that runs `exec >file` still ends its
# streams), and the control pipe at 53 (moved from the number the server gave). Bash cannot
# mark a descriptor close-on-exec, so each cell's `eval` runs with those four closed (bash
# restores them after it): the commands a cell starts never hold the protocol's pipes. 50-53
# stay clear of `exec {fd}>...` (which allocates from 10: a descriptor it gets during a cell
# must not be one that bash restores after it) and of process substitution (which counts down
# from 63); a sandbox has at least 64 descriptors (limits.open_files_max).
#
# Its variables and functions are named __sandboxd_*; the loop is at the top level, not in a
# function, so that a cell's `declare` makes globals as a script's does.
#
# Runs inside the sandbox with the code's privileges, on the image's bash.

shopt -s expand_aliases
if [ __SANDBOXD_CONTROL_FD__ != 53 ]; then
  exec 53>&__SANDBOXD_CONTROL_FD__ __SANDBOXD_CONTROL_FD__>&-
fi
exec 50<&0 51>&1 52>&2 </dev/null
__sandboxd_marker=$'\x1esandboxd-end-'__SANDBOXD_NONCE__$'\x1e'

# One request: its variables into __sandboxd_env (exported by the caller, at the top level, so
# that a request's LC_ALL outlives this function's), its code into __sandboxd_code. Lengths
# are in bytes: the C locale for `read -N` and `${#...}`.
__sandboxd_read() {
  local LC_ALL=C __sandboxd_n __sandboxd_size __sandboxd_entry
  __sandboxd_env=()
  __sandboxd_code=
  IFS= builtin read -r -N 10 -u 50 __sandboxd_n || return 1
  IFS= builtin read -r -N 10 -u 50 __sandboxd_size || return 1
  [[ $__sandboxd_n =~ ^[0-9]{10}$ && $__sandboxd_size =~ ^[0-9]{10}$ ]] || return 1
  __sandboxd_n=$((10#$__sandboxd_n))
  __sandboxd_size=$((10#$__sandboxd_size))
  while (( __sandboxd_n > 0 )); do
    IFS= builtin read -r -d '' -u 50 __sandboxd_entry || return 1
    __sandboxd_n=$((__sandboxd_n - ${#__sandboxd_entry} - 1))
    __sandboxd_env+=("$__sandboxd_entry")
  done
  if (( __sandboxd_size > 0 )); then
    IFS= builtin read -r -N "$__sandboxd_size" -u 50 __sandboxd_code || return 1
  fi
  return 0
}

builtin printf '{"ready": true}\n' >&53
__sandboxd_xtrace=
while __sandboxd_read; do
  for __sandboxd_entry in "${__sandboxd_env[@]}"; do
    builtin export -- "$__sandboxd_entry" 2>/dev/null
  done
  __sandboxd_status=0
  # A one-pass loop: a cell's `break` or `continue` ends it, not the driver's loop. Under
  # `set -x` only the cell's own commands are traced: the driver turns it off after a cell
  # (its trace going to /dev/null) and the next cell turns it on again as its first command.
  for __sandboxd_once in 1; do
    builtin eval "$__sandboxd_xtrace$__sandboxd_code" 0</dev/null 50<&- 51>&- 52>&- 53>&-
    { __sandboxd_status=$?
      __sandboxd_xtrace=
      [[ $- != *x* ]] || __sandboxd_xtrace='set -x; '
      builtin set +x; } 2>/dev/null
  done
  { [[ $- != *x* ]] || __sandboxd_xtrace='set -x; '; builtin set +x; } 2>/dev/null  # after `break`
  builtin printf '%s' "$__sandboxd_marker" >&51
  builtin printf '%s' "$__sandboxd_marker" >&52
  builtin printf '{"exit": %d, "outputs": []}\n' "$__sandboxd_status" >&53
done
exit 0
