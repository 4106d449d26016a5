#!/usr/bin/env bash
# Installs dirigent for the current user:
#   1. the binary: builds this checkout with `cargo install --locked --path <repo> --root <root>`
#      (<root>: $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo) and uses <root>/bin/dirigent,
#      or uses the file given with --binary. The service runs exactly that file (its absolute
#      path), never whichever `dirigent` comes first on PATH;
#   2. the service: the systemd user unit ~/.config/systemd/user/dirigent@.service (Linux) or the
#      launchd agent ~/Library/LaunchAgents/com.dirigent.daemon.plist (macOS);
#   3. the Claude Code skills (skills/) into ~/.claude/skills/.
# It enables and starts nothing: it prints the commands that do (and runs
# `systemctl --user daemon-reload` when it changed the unit and a user manager answers).
#
# The service's PATH: systemd and launchd start services with a minimal PATH, in which CLIs
# installed with npm (claude, gemini, codex, opencode) or pip/pipx (aider) are usually missing,
# so every attempt would fail with `spawn`. The unit therefore gets `Environment=PATH=…` (the
# plist: PATH under EnvironmentVariables), computed here at install time from, in this order:
# the installed binary's directory, the PATH this script runs with, the directories where
# claude, gemini, codex, opencode, aider, ollama and node were found, `npm prefix -g`/bin when
# npm is installed, and common bin directories that exist (~/.local/bin, ~/.npm-global/bin, …);
# only absolute paths of existing directories, each once. The script prints the PATH it wrote
# and which agent CLIs it finds.
# To change it: `--service-path DIRS`, or (systemd) `systemctl --user edit dirigent@.service`
# with `Environment=PATH=…` under [Service], which survives reinstalls.
#
# Files that already exist and differ from what would be written (the unit, the plist, each
# skill file) are replaced only after "y" on the terminal; when stdin is not a terminal they
# are kept, and the script says so and how to force it (--yes).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/install.sh [options] [WORKSPACE]

Installs dirigent for the current user and prepares its service for WORKSPACE (default: the
current directory):

  binary   cargo install --locked --path <this checkout> --root <root>, where <root> is
           $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo; the service runs
           <root>/bin/dirigent by its absolute path (or the file given with --binary)
  service  Linux: ~/.config/systemd/user/dirigent@.service (instance = the escaped workspace
           path); macOS: ~/Library/LaunchAgents/com.dirigent.daemon.plist. Both get a PATH
           that finds the agent CLIs (see below)
  skills   the Claude Code skills of skills/ into ~/.claude/skills/

It enables and starts nothing; it prints the commands that do. When it changed the unit and
`systemctl --user` answers, it runs `systemctl --user daemon-reload`. Without systemctl or
launchctl it says what it would have run.

A file that exists and differs from the new version is replaced only if you answer "y" (the
difference is shown first). When stdin is not a terminal it is kept, and the script lists it;
--yes replaces such files without asking.

options:
  -y, --yes             replace existing files that differ without asking
  --binary FILE         use this dirigent binary (by its absolute path) instead of building one
  --service-path DIRS   the PATH the service gets, colon-separated absolute directories,
                        instead of the computed one
  --no-service          do not write the systemd unit or the launchd plist
  --no-skills           do not install the Claude Code skills
  -h, --help            this text

The service's PATH (written as Environment=PATH=… into the unit, or under
EnvironmentVariables in the plist) is computed from: the installed binary's directory, your
current PATH, the directories of claude, gemini, codex, opencode, aider, ollama and node where
they are found, `npm prefix -g`/bin, and ~/.local/bin, ~/.npm-global/bin, ~/.bun/bin,
~/.claude/local, ~/.cargo/bin, /opt/homebrew/bin, /usr/local/bin, /usr/bin, /bin, /usr/sbin,
/sbin where they exist. Only absolute paths of existing directories are kept. To change it
later: run this script again with --service-path, or `systemctl --user edit dirigent@.service`
and set Environment=PATH=… under [Service].
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

q() { # ARG, quoted for a shell command line the user may copy
  printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

yes=0
binary=
service_path_given=
do_service=1
do_skills=1
workspace_arg=
while [ $# -gt 0 ]; do
  case $1 in
    -y | --yes) yes=1 ;;
    --binary)
      [ $# -ge 2 ] || die "--binary needs a file"
      binary=$2
      shift
      ;;
    --binary=*) binary=${1#--binary=} ;;
    --service-path)
      [ $# -ge 2 ] || die "--service-path needs a value like /usr/local/bin:/usr/bin:/bin"
      service_path_given=$2
      shift
      ;;
    --service-path=*) service_path_given=${1#--service-path=} ;;
    --no-service) do_service=0 ;;
    --no-skills) do_skills=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ -n "$workspace_arg" ]; }; then
        die "one WORKSPACE at most (see --help)"
      fi
      [ $# -eq 0 ] || workspace_arg=$1
      break
      ;;
    -*) die "unknown option \`$1\` (see --help)" ;;
    *)
      [ -z "$workspace_arg" ] || die "one WORKSPACE at most (see --help)"
      workspace_arg=$1
      ;;
  esac
  shift
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
workspace="$(cd "${workspace_arg:-.}" 2>/dev/null && pwd)" ||
  die "the workspace \`${workspace_arg:-.}\` is not a directory"

# Temporary files of this run (removed on exit, also on an error or ^C): generated files wait
# in a private directory; each is copied next to its destination and renamed into place.
stage=$(mktemp -d "${TMPDIR:-/tmp}/dirigent-install.XXXXXX")
tmp_files=()
cleanup() {
  rm -rf "$stage"
  if [ ${#tmp_files[@]} -gt 0 ]; then
    rm -f "${tmp_files[@]}"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
make_tmp() { # DIR: a new empty file in DIR; its name goes to the variable `tmp`
  tmp=$(mktemp "$1/.dirigent-install.XXXXXX")
  tmp_files+=("$tmp")
}

# Characters that would need escaping in a unit file or a PATH are refused instead.
plain_path() { # PATH: whether it is absolute and free of quotes, backslashes and control chars
  case $1 in
    /*) ;;
    *) return 1 ;;
  esac
  case $1 in
    *[\"\\]* | *[[:cntrl:]]*) return 1 ;;
  esac
  return 0
}

if [ -n "$service_path_given" ]; then
  IFS=: read -r -a given <<<"$service_path_given" || true
  [ ${#given[@]} -gt 0 ] || die "--service-path is empty"
  case $service_path_given in
    :* | *: | *::*) die "--service-path: an empty entry would mean the current directory" ;;
  esac
  for d in "${given[@]}"; do
    plain_path "$d" ||
      die "--service-path: \`$d\` is not an absolute path (or has quotes, backslashes or control characters)"
    [ -d "$d" ] || echo "warning:   --service-path: \`$d\` does not exist (kept)"
  done
fi

# ---------------------------------------------------------------------------------------------
# Files: replace one that exists and differs only with the user's consent.

kept=()        # existing files left as they were
wrote=0        # whether the last put_file wrote its destination
outcome=''     # and what it did: installed, replaced, unchanged or kept

confirm_replace() { # NEW DEST
  if [ "$yes" = 1 ]; then
    return 0
  fi
  if [ ! -t 0 ]; then
    echo "kept:      $2 (it differs from the new version; stdin is not a terminal, so not asking)"
    return 1
  fi
  {
    echo
    echo "$2 exists and differs from the version this script would install"
    if command -v diff >/dev/null 2>&1; then
      echo "(- lines: the file now, + lines: the new version; at most 40 lines shown):"
      { diff -u "$2" "$1" | sed -e '1,2d' -e '43,$d'; } || true
    fi
    printf 'replace %s? [y/N] ' "$2"
  } >&2
  local answer=''
  read -r answer || answer=
  case $answer in
    [yY] | [yY][eE][sS]) return 0 ;;
  esac
  echo "kept:      $2"
  return 1
}

put_file() { # NEW DEST: installs the file NEW as DEST (mode 0644), asking before replacing
  local new=$1 dest=$2 action=installed
  wrote=0
  outcome=kept
  if [ -L "$dest" ] || [ -e "$dest" ]; then
    if [ -f "$dest" ] && cmp -s "$new" "$dest"; then
      echo "unchanged: $dest"
      outcome=unchanged
      return 0
    fi
    if [ -d "$dest" ] && [ ! -L "$dest" ]; then
      echo "kept:      $dest (a directory is in the way)"
      kept+=("$dest")
      return 0
    fi
    if ! confirm_replace "$new" "$dest"; then
      kept+=("$dest")
      return 0
    fi
    action=replaced
  fi
  mkdir -p "$(dirname "$dest")"
  make_tmp "$(dirname "$dest")"
  cat "$new" >"$tmp"
  chmod 644 "$tmp"
  # A rename: a symbolic link at DEST is replaced, never written through.
  mv -f "$tmp" "$dest"
  printf '%-10s %s\n' "$action:" "$dest"
  wrote=1
  outcome=$action
}

# ---------------------------------------------------------------------------------------------
# 1. The binary.

if [ -n "$binary" ]; then
  if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
    die "--binary: \`$binary\` is not an executable file"
  fi
  bin="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
else
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed: install Rust (https://rustup.rs), or give a built binary with --binary FILE"
  [ -f "$repo/Cargo.toml" ] || die "\`$repo\` is not the dirigent checkout (no Cargo.toml)"
  root=${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}
  echo "building and installing dirigent: cargo install --locked --path $(q "$repo") --root $(q "$root")"
  cargo install --locked --path "$repo" --root "$root"
  [ -x "$root/bin/dirigent" ] || die "cargo install did not produce \`$root/bin/dirigent\`"
  bin="$(cd "$root/bin" && pwd)/dirigent"
fi
plain_path "$bin" || die "the binary's path \`$bin\` has characters a unit file cannot hold; use another directory"
version=$("$bin" --version 2>/dev/null | head -n 1) || die "\`$bin --version\` failed: is it a dirigent binary?"
case $version in
  dirigent\ *) ;;
  *) die "\`$bin\` says \`$version\`, not a dirigent version" ;;
esac
echo "binary:    $bin ($version)"
if [ -x "$(dirname "$bin")/dirigent-supervise" ]; then
  echo "supervisor: $(dirname "$bin")/dirigent-supervise (started for every attempt)"
else
  echo "note:      no \`dirigent-supervise\` next to it: every attempt starts \`dirigent __supervise\` instead, which costs about a millisecond more per attempt"
fi
on_path=$(type -P dirigent 2>/dev/null || true)
if [ -n "$on_path" ] && [ "$on_path" != "$bin" ]; then
  echo "note:      \`dirigent\` on your PATH is $on_path; the service runs $bin"
elif [ -z "$on_path" ]; then
  echo "note:      $(dirname "$bin") is not on your PATH; add it to run \`dirigent\` by name"
fi

# ---------------------------------------------------------------------------------------------
# 2. The service.

path_dirs=()
add_dir() { # DIR: appends DIR to path_dirs unless it is relative, missing, odd or already there
  local d=$1 have
  [ -n "$d" ] && plain_path "$d" && [ -d "$d" ] || return 0
  case $d in
    *:*) return 0 ;;
  esac
  [ "$d" = / ] || d=${d%/}
  if [ ${#path_dirs[@]} -gt 0 ]; then
    for have in "${path_dirs[@]}"; do
      [ "$have" != "$d" ] || return 0
    done
  fi
  path_dirs+=("$d")
}

agents_found=()
agents_missing=()
compute_service_path() {
  local entry cli found prefix
  add_dir "$(dirname "$bin")"
  local IFS=:
  local -a entries
  read -r -a entries <<<"${PATH:-}" || true
  unset IFS
  if [ ${#entries[@]} -gt 0 ]; then
    for entry in "${entries[@]}"; do
      add_dir "$entry"
    done
  fi
  for cli in claude gemini codex opencode aider ollama; do
    found=$(type -P "$cli" 2>/dev/null || true)
    [ -z "$found" ] || add_dir "$(dirname "$found")"
  done
  # The npm CLIs are node scripts (`#!/usr/bin/env node`): node must be found too.
  found=$(type -P node 2>/dev/null || true)
  [ -z "$found" ] || add_dir "$(dirname "$found")"
  if command -v npm >/dev/null 2>&1; then
    prefix=$(npm prefix -g 2>/dev/null || true)
    [ -z "$prefix" ] || add_dir "$prefix/bin"
  fi
  for entry in "$HOME/.local/bin" "$HOME/.npm-global/bin" "$HOME/.bun/bin" "$HOME/.claude/local" \
    "$HOME/.cargo/bin" /opt/homebrew/bin /usr/local/bin /usr/bin /bin /usr/sbin /sbin; do
    add_dir "$entry"
  done
  local joined='' d
  for d in "${path_dirs[@]}"; do
    joined=${joined:+$joined:}$d
  done
  svc_path=$joined
}

# The instance name `systemd-escape --path` gives; without it (no systemd), the same rules,
# for printing the commands only.
escape_path() {
  if command -v systemd-escape >/dev/null 2>&1; then
    systemd-escape --path "$1"
    return
  fi
  local p=$1 out='' c i
  while [[ $p == *//* ]]; do p=${p//\/\//\/}; done
  p=${p#/}
  p=${p%/}
  if [ -z "$p" ]; then
    echo -
    return
  fi
  local LC_ALL=C
  for ((i = 0; i < ${#p}; i++)); do
    c=${p:i:1}
    case $c in
      /) out+=- ;;
      [a-zA-Z0-9:_]) out+=$c ;;
      .) if [ "$i" -eq 0 ]; then out+='\x2e'; else out+=.; fi ;;
      *) out+=$(printf '\\x%02x' "'$c") ;;
    esac
  done
  echo "$out"
}

xml_escape() {
  printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

# ExecStart='s program and Environment= values: `%` starts a specifier, so it is doubled (a `$`
# is literal in both places); a value with a space is quoted.
systemd_value() {
  local v=${1//%/%%}
  case $v in
    *' '*) printf '"%s"' "$v" ;;
    *) printf '%s' "$v" ;;
  esac
}

write_systemd_unit() { # OUT
  local template="$repo/systemd/dirigent@.service" line exec_done=0 env_done=0
  [ -f "$template" ] || die "the unit template \`$template\` is missing"
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      ExecStart=*)
        printf 'ExecStart=%s daemon\n' "$(systemd_value "$bin")"
        exec_done=1
        ;;
      Environment=DIRIGENT_ROOT=*)
        printf '%s\n' "$line"
        cat <<EOF
# PATH for the agent CLIs (claude, gemini, codex, opencode, aider, ollama, your scripts): a
# service otherwise gets systemd's minimal PATH, without npm's or pip's bin directories.
# Written by scripts/install.sh from the PATH it ran with, the directories those CLIs were
# found in and \`npm prefix -g\`/bin. To change it: \`systemctl --user edit dirigent@.service\`
# and set Environment=PATH=... under [Service] (kept across reinstalls), or run
# scripts/install.sh again with --service-path DIRS.
EOF
        printf 'Environment=%s\n' "$(systemd_value "PATH=$svc_path")"
        env_done=1
        ;;
      *) printf '%s\n' "$line" ;;
    esac
  done <"$template" >"$1"
  if [ "$exec_done" != 1 ] || [ "$env_done" != 1 ]; then
    die "\`$template\` has no ExecStart= or Environment=DIRIGENT_ROOT= line to fill in"
  fi
}

write_launchd_plist() { # OUT
  local template="$repo/systemd/com.dirigent.daemon.plist" line n=0
  [ -f "$template" ] || die "the plist template \`$template\` is missing"
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      *'<string>/usr/local/bin/dirigent</string>'*)
        printf '    <string>%s</string>\n' "$(xml_escape "$bin")"
        n=$((n + 1))
        ;;
      *'<key>DIRIGENT_ROOT</key><string>WORKSPACE</string>'*)
        printf '  <dict>\n'
        printf '    <key>DIRIGENT_ROOT</key><string>%s</string>\n' "$(xml_escape "$workspace")"
        cat <<'EOF'
    <!-- PATH for the agent CLIs: launchd's own is /usr/bin:/bin:/usr/sbin:/sbin. Written by
         scripts/install.sh from the PATH it ran with, where the CLIs were found and npm's
         global bin. Change it here and load the agent again, or run scripts/install.sh again
         (see its help for the service path option). -->
EOF
        printf '    <key>PATH</key><string>%s</string>\n' "$(xml_escape "$svc_path")"
        printf '  </dict>\n'
        n=$((n + 1))
        ;;
      *'<string>/tmp/dirigent.log</string>'*)
        # Not /tmp: another user could plant a link there.
        printf '  <key>StandardErrorPath</key><string>%s</string>\n' \
          "$(xml_escape "$HOME/Library/Logs/dirigent.log")"
        n=$((n + 1))
        ;;
      *) printf '%s\n' "$line" ;;
    esac
  done <"$template" >"$1"
  [ "$n" = 3 ] || die "\`$template\` does not have the lines this script fills in"
}

print_path_summary() { # OUTCOME HOW-TO-CHANGE
  local cli found
  for cli in claude gemini codex opencode aider ollama; do
    found=$(PATH=$svc_path type -P "$cli" 2>/dev/null || true)
    if [ -n "$found" ]; then
      agents_found+=("$cli ($found)")
    else
      agents_missing+=("$cli")
    fi
  done
  case $1 in
    installed | replaced) echo "service PATH written (the daemon looks the agent CLIs up in it):" ;;
    unchanged) echo "service PATH, already in place (the daemon looks the agent CLIs up in it):" ;;
    *) echo "service PATH of the new version, NOT written (the existing file was kept, see above):" ;;
  esac
  echo "  $svc_path"
  if [ ${#agents_found[@]} -gt 0 ]; then
    echo "  agent CLIs it finds: ${agents_found[*]}"
  fi
  if [ ${#agents_missing[@]} -gt 0 ]; then
    echo "  not on it: ${agents_missing[*]} (install the ones you want, then run this script again)"
  fi
  echo "  to change it: run this script again with --service-path DIRS$2"
}

install_service() {
  if [ -n "$service_path_given" ]; then
    svc_path=$service_path_given
  else
    compute_service_path
  fi

  case "$(uname -s)" in
    Linux)
      local unit_dir="$HOME/.config/systemd/user"
      local unit="$unit_dir/dirigent@.service"
      local instance service
      instance="$(escape_path "$workspace")"
      service="dirigent@$instance.service"
      local new="$stage/dirigent@.service"
      write_systemd_unit "$new"
      put_file "$new" "$unit"
      local unit_changed=$wrote
      print_path_summary "$outcome" \
        ", or \`systemctl --user edit dirigent@.service\` and set Environment=PATH=... under [Service]"
      echo
      if ! command -v systemctl >/dev/null 2>&1; then
        echo "systemctl is not installed (no systemd here), so nothing was reloaded. With systemd you would run:"
        echo "  systemctl --user daemon-reload && systemctl --user enable --now $(q "$service")"
        echo "Without it, run the daemon yourself: $(q "$bin") --root $(q "$workspace") daemon"
      elif ! systemctl --user show-environment >/dev/null 2>&1; then
        echo "\`systemctl --user\` cannot reach your user service manager here (no user session: sudo, su,"
        echo "a container, ssh without lingering), so nothing was reloaded. In your login session run:"
        echo "  systemctl --user daemon-reload && systemctl --user enable --now $(q "$service")"
        echo "To keep it running while you are logged out: loginctl enable-linger \"\$USER\""
        echo "Without a user manager, run the daemon yourself: $(q "$bin") --root $(q "$workspace") daemon"
      else
        if [ "$unit_changed" = 1 ]; then
          systemctl --user daemon-reload
          echo "ran:       systemctl --user daemon-reload"
        fi
        if systemctl --user is-active --quiet "$service" 2>/dev/null; then
          echo "$service is running; restart it to use this binary and unit:"
          echo "  systemctl --user restart $(q "$service")"
        else
          echo "enable and start it for $workspace with:"
          echo "  systemctl --user enable --now $(q "$service")"
        fi
        echo "logs:      journalctl --user -u $(q "$service") -f"
        echo "To keep it running while you are logged out: loginctl enable-linger \"\$USER\""
      fi
      ;;
    Darwin)
      local plist="$HOME/Library/LaunchAgents/com.dirigent.daemon.plist"
      mkdir -p "$HOME/Library/Logs"
      local new="$stage/com.dirigent.daemon.plist"
      write_launchd_plist "$new"
      if command -v plutil >/dev/null 2>&1; then
        plutil -lint -s "$new" >/dev/null || die "the generated plist does not pass plutil -lint"
      fi
      put_file "$new" "$plist"
      print_path_summary "$outcome" " (or edit the PATH in the plist and load it again)"
      echo
      if ! command -v launchctl >/dev/null 2>&1; then
        echo "launchctl is not installed, so nothing was loaded. On macOS you would run:"
        echo "  launchctl load -w $(q "$plist")"
        echo "Without it, run the daemon yourself: $(q "$bin") --root $(q "$workspace") daemon"
      elif launchctl list com.dirigent.daemon >/dev/null 2>&1; then
        echo "com.dirigent.daemon is loaded; load it again to use this binary and plist:"
        echo "  launchctl unload $(q "$plist") && launchctl load -w $(q "$plist")"
      else
        echo "load and start it for $workspace with:"
        echo "  launchctl load -w $(q "$plist")"
      fi
      echo "logs:      ~/Library/Logs/dirigent.log"
      ;;
    *)
      echo "no service manager support for $(uname -s); run the daemon yourself:"
      echo "  $(q "$bin") --root $(q "$workspace") daemon"
      ;;
  esac
  if [ ! -d "$workspace/.context" ]; then
    echo "($workspace has no .context/ yet: the daemon makes it; \`dirigent init\` there first writes a commented config)"
  fi
}

if [ "$do_service" = 1 ]; then
  echo
  install_service
fi

# ---------------------------------------------------------------------------------------------
# 3. The Claude Code skills.

if [ "$do_skills" = 1 ]; then
  echo
  skills_dest="$HOME/.claude/skills"
  [ -d "$repo/skills" ] || die "\`$repo/skills\` is missing"
  # The list comes on descriptor 3: stdin stays the terminal that put_file asks on.
  while IFS= read -r -d '' file <&3; do
    put_file "$file" "$skills_dest/${file#"$repo/skills/"}"
  done 3< <(find "$repo/skills" -type f -print0 | sort -z)
fi

if [ ${#kept[@]} -gt 0 ]; then
  echo
  echo "kept ${#kept[@]} existing file(s) that differ from this version:"
  printf '  %s\n' "${kept[@]}"
  echo "To replace them: run the script again on a terminal and answer y, or pass --yes."
fi
