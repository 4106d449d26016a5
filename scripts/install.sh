#!/usr/bin/env bash
# Installs dirigent for the current user: the binary (cargo install), the systemd user unit
# (Linux) or the launchd plist (macOS), and the Claude Code skill. Prints the command that
# enables the service; enables nothing by itself.
#
#   scripts/install.sh [WORKSPACE]      (default: the current directory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
workspace="$(cd "${1:-.}" && pwd)"

cargo install --locked --path "$repo"
bin="$(command -v dirigent || echo "$HOME/.cargo/bin/dirigent")"

mkdir -p "$HOME/.claude/skills"
cp -R "$repo/skills/." "$HOME/.claude/skills/"
echo "installed the Claude Code skills into ~/.claude/skills/"

case "$(uname -s)" in
  Linux)
    unit_dir="$HOME/.config/systemd/user"
    mkdir -p "$unit_dir"
    sed "s|%h/.cargo/bin/dirigent|$bin|" "$repo/systemd/dirigent@.service" > "$unit_dir/dirigent@.service"
    instance="$(systemd-escape --path "$workspace")"
    echo "installed $unit_dir/dirigent@.service"
    echo "enable it for $workspace with:"
    echo "  systemctl --user daemon-reload && systemctl --user enable --now 'dirigent@$instance.service'"
    ;;
  Darwin)
    plist="$HOME/Library/LaunchAgents/com.dirigent.daemon.plist"
    mkdir -p "$(dirname "$plist")"
    sed -e "s|/usr/local/bin/dirigent|$bin|" -e "s|WORKSPACE|$workspace|" \
      "$repo/systemd/com.dirigent.daemon.plist" > "$plist"
    echo "installed $plist"
    echo "enable it with:"
    echo "  launchctl load '$plist'"
    ;;
  *)
    echo "no service manager support for $(uname -s); run \`dirigent daemon\` yourself"
    ;;
esac
