#!/bin/sh
# Build LockStock from source and install its binaries, shell completions and man pages.
#
#   ./install.sh                    install to ~/.local (binaries in ~/.local/bin)
#   ./install.sh --prefix /opt/ls   install somewhere else
#   ./install.sh --uninstall        remove what an earlier run installed (same --prefix)
#
# Running it again upgrades in place. Needs cargo (https://rustup.rs). POSIX sh.

set -eu

usage() {
    cat <<'EOF'
Usage: install.sh [--prefix DIR] [--uninstall]

Builds the LockStock workspace in release mode and installs every binary it builds
(liberty, ...) into DIR/bin, bash and zsh completions and man pages under DIR/share.

  --prefix DIR   where to install (default: ~/.local)
  --uninstall    remove the files a previous install put under DIR
  -h, --help     show this help

Environment: CARGO_TARGET_DIR is honoured (builds are reused); XDG_DATA_HOME sets where
bash completions go when no --prefix is given.
EOF
}

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

prefix=""
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix)
            [ $# -ge 2 ] || die "--prefix needs a directory"
            prefix=$2
            shift 2
            ;;
        --prefix=*)
            prefix=${1#--prefix=}
            shift
            ;;
        --uninstall)
            uninstall=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
done

[ -n "${HOME:-}" ] || [ -n "$prefix" ] || die "HOME is not set; pass --prefix DIR"
if [ -z "$prefix" ]; then
    prefix="$HOME/.local"
    bash_dir="${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions"
else
    bash_dir="$prefix/share/bash-completion/completions"
fi
case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ; bash_dir="$(pwd)/$bash_dir" ;;
esac
bin_dir="$prefix/bin"
zsh_dir="$prefix/share/zsh/site-functions"
man_dir="$prefix/share/man/man1"
manifest_dir="$prefix/share/lockstock"
manifest="$manifest_dir/installed-files"

if [ "$uninstall" -eq 1 ]; then
    if [ ! -f "$manifest" ]; then
        say "Nothing to uninstall: no $manifest (was LockStock installed with this --prefix?)"
        exit 0
    fi
    while IFS= read -r file; do
        [ -n "$file" ] || continue
        if [ -e "$file" ] || [ -L "$file" ]; then
            rm -f "$file"
            say "removed $file"
        fi
    done <"$manifest"
    rm -f "$manifest"
    rmdir "$manifest_dir" 2>/dev/null || true
    say "Uninstalled LockStock from $prefix"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust from https://rustup.rs and retry"

repo=$(cd "$(dirname "$0")" && pwd)
[ -f "$repo/Cargo.toml" ] || die "run install.sh from a LockStock checkout ($repo has no Cargo.toml)"

say "Building LockStock (release); the first build takes a few minutes..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# Test tooling (fixture servers, load generators) is not installed.
(cd "$repo" && cargo build --release --workspace --exclude lockstock-testkit --bins \
    --message-format=json-render-diagnostics) \
    >"$tmp/build.json" || die "cargo build failed"

# Every binary cargo built for the workspace, as cargo reports it (wherever the target dir is).
sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' "$tmp/build.json" | sort -u >"$tmp/executables"
[ -s "$tmp/executables" ] || die "cargo built no binaries"

mkdir -p "$bin_dir" "$bash_dir" "$zsh_dir" "$man_dir" "$manifest_dir"
: >"$tmp/manifest"

record() { printf '%s\n' "$1" >>"$tmp/manifest"; }

# generate BIN WHAT DEST CHECKED_IN: the binary's own output, else the checked-in copy.
generate() {
    if "$1" generate "$2" >"$tmp/generated" 2>/dev/null && [ -s "$tmp/generated" ]; then
        cp "$tmp/generated" "$3"
    elif [ -f "$4" ]; then
        cp "$4" "$3"
    else
        return 0
    fi
    chmod 0644 "$3"
    record "$3"
}

while IFS= read -r exe; do
    name=$(basename "$exe")
    dest="$bin_dir/$name"
    # Copy then rename, so a running copy of the old binary is never overwritten in place.
    cp "$exe" "$dest.new"
    chmod 0755 "$dest.new"
    mv -f "$dest.new" "$dest"
    record "$dest"
    generate "$dest" bash "$bash_dir/$name" "$repo/completions/$name.bash"
    generate "$dest" zsh "$zsh_dir/_$name" "$repo/completions/_$name"
    generate "$dest" man "$man_dir/$name.1" "$repo/man/$name.1"
    say "installed $dest"
done <"$tmp/executables"

sort -u "$tmp/manifest" >"$manifest"

say ""
say "Installed to $prefix:"
say "  binaries:         $bin_dir"
say "  bash completions: $bash_dir"
say "  zsh completions:  $zsh_dir"
say "  man pages:        $man_dir"

case ":${PATH:-}:" in
    *":$bin_dir:"*) ;;
    *)
        say ""
        say "Note: $bin_dir is not on your PATH. Add this line to your shell's startup file"
        say "(~/.profile, ~/.bashrc or ~/.zshrc), then open a new terminal:"
        say "  export PATH=\"$bin_dir:\$PATH\""
        ;;
esac
say ""
say "zsh: if completions do not appear, add  fpath+=($zsh_dir)  before compinit in ~/.zshrc."
