#!/bin/sh
# A scriptable editing agent for the worktree tests. Its prompt is a list of commands, one per
# line, run in its working directory (other lines are ignored):
#   replace FILE FROM TO     replace the line FROM by TO
#   append FILE TEXT…        append a line to FILE
#   commit MESSAGE…          commit everything itself (an agent that makes its own commits)
#   refuse-if FILE TEXT      fail if FILE holds TEXT (a leftover it must not see)
#   require FILE TEXT        fail unless FILE holds TEXT (work it must see)
#   fail                     exit 1, keeping the edits made so far
#   as AGENT CMD…            CMD only when this agent is AGENT ($DIRIGENT_AGENT)
#   onretry CMD…             CMD only on a verify feedback round (the prompt carries the check)
#   firsttry CMD…            CMD only when it is not such a round
#   onresolve CMD…           CMD only when it is asked to resolve a merge conflict
#   unmark FILE              resolve FILE's conflicts by keeping both sides (markers removed)
#   run CMD…                 run CMD with sh (what a hostile agent does)
prompt=$(cat)
retry=no
case "$prompt" in *"## The check failed"*) retry=yes ;; esac
resolve=no
case "$prompt" in *"## Resolve the merge conflict"*) resolve=yes ;; esac
printf '%s\n' "$prompt" | {
  while IFS= read -r line; do
    set -f
    set -- $line
    set +f
    while :; do
      case "$1" in
        as) [ "$2" = "$DIRIGENT_AGENT" ] || continue 2; shift 2 ;;
        onretry) [ $retry = yes ] || continue 2; shift ;;
        firsttry) [ $retry = no ] || continue 2; shift ;;
        onresolve) [ $resolve = yes ] || continue 2; shift ;;
        *) break ;;
      esac
    done
    case "$1" in
      replace) sed -i "s/^$3\$/$4/" "$2" ;;
      append) f=$2; shift 2; printf '%s\n' "$*" >> "$f" ;;
      commit) shift; git add -A && git -c user.name=agent -c user.email=agent@example.com commit -q -m "$*" ;;
      refuse-if) if grep -q "$3" "$2"; then echo "found a leftover '$3' in $2" >&2; exit 1; fi ;;
      require) if ! grep -q "$3" "$2"; then echo "no '$3' in $2" >&2; exit 1; fi ;;
      fail) echo "failing as told" >&2; exit 1 ;;
      run) shift; sh -c "$*" ;;
      unmark) sed -i '/^<<<<<<< /d; /^=======$/d; /^>>>>>>> /d' "$2" ;;
    esac
  done
} || exit 1
echo "edited in $(pwd)"
