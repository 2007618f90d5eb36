#!/usr/bin/env bash
# Download, verify and extract CIFAR-10 (default) or CIFAR-100 in the layout dataloaders/cifar.py reads.
#
#   bash cifar10.sh                      # -> ./cifar-10/cifar-10-batches-py/{data_batch_1..5,test_batch}
#   bash cifar10.sh cifar100             # -> ./cifar-100/cifar-100-python/{train,test}
#   bash cifar10.sh cifar10 /data/cifar-10
#
# Then: python instanceGM.py --data_path ./cifar-10   (CIFAR-100: --dataset cifar100 --num_class 100 --data_path ./cifar-100)
#
# A second run is a no-op once the files are there. Environment overrides (mirrors, tests):
#   CIFAR_URL  where to fetch the tarball: http(s)://, file://, or a local path
#   CIFAR_MD5  its expected MD5 (default: the official tarball's, as in torchvision's CIFAR10/CIFAR100.tgz_md5)
#
# Unlike the original cifar10.sh / cifar100.sh (which only downloaded the tarball into the current folder,
# README Differences #17), this checks the MD5 and extracts.
set -euo pipefail

usage() {
    echo "usage: bash cifar10.sh [cifar10|cifar100] [DEST]" >&2
    exit 2
}
die() {
    echo "cifar10.sh: error: $*" >&2
    exit 1
}

dataset="${1:-cifar10}"
case "$dataset" in
    cifar10 | cifar-10 | CIFAR10 | CIFAR-10)
        dataset=cifar10
        default_dest=./cifar-10
        tarball=cifar-10-python.tar.gz
        folder=cifar-10-batches-py
        files=(data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch)
        official_md5=c58f30108f718f92721af3b95e74349a
        ;;
    cifar100 | cifar-100 | CIFAR100 | CIFAR-100)
        dataset=cifar100
        default_dest=./cifar-100
        tarball=cifar-100-python.tar.gz
        folder=cifar-100-python
        files=(train test)
        official_md5=eb9058c3a382ffc7106e4002c42a8d85
        ;;
    -h | --help) usage ;;
    *) echo "cifar10.sh: unknown dataset '$dataset'" >&2 && usage ;;
esac
[[ $# -le 2 ]] || usage
dest="${2:-$default_dest}"
url="${CIFAR_URL:-https://www.cs.toronto.edu/~kriz/$tarball}"
md5="${CIFAR_MD5:-$official_md5}"

# True when every file is in DEST/<folder>/ (extracted tarball) or directly in DEST (the original's layout).
have_files() {
    local dir
    for dir in "$dest/$folder" "$dest"; do
        local missing=0 name
        for name in "${files[@]}"; do
            [[ -s "$dir/$name" ]] || missing=1
        done
        if [[ $missing -eq 0 ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

md5_of() {
    if command -v md5sum >/dev/null 2>&1; then
        md5sum "$1" | cut -d' ' -f1
    elif command -v md5 >/dev/null 2>&1; then # macOS
        md5 -q "$1"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import hashlib, sys
h = hashlib.md5()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    else
        die "no md5sum, md5 or python3 to verify the download with"
    fi
}

fetch() { # fetch URL FILE
    local src="$1" out="$2"
    if [[ "$src" == file://* || "$src" != *://* ]]; then
        src="${src#file://}"
        [[ -f "$src" ]] || die "$src does not exist (CIFAR_URL=$1)"
        cp "$src" "$out"
    elif command -v curl >/dev/null 2>&1; then
        curl -fL --retry 2 --connect-timeout 20 -o "$out" "$src"
    elif command -v wget >/dev/null 2>&1; then
        wget --tries=3 --timeout=20 -O "$out" "$src"
    elif command -v python3 >/dev/null 2>&1; then # slim images (the training image) have Python, not curl
        python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "$src" "$out"
    else
        die "none of curl, wget or python3 is installed; install one, or download $src by hand into $dest and rerun"
    fi
}

if found="$(have_files)"; then
    echo "$dataset is already in $found: nothing to do"
    exit 0
fi

mkdir -p "$dest"
archive="$dest/$tarball"
if [[ -f "$archive" && "$(md5_of "$archive")" == "$md5" ]]; then
    echo "using the verified $archive already there"
else
    echo "downloading $url -> $archive"
    rm -f "$archive.part"
    if ! fetch "$url" "$archive.part"; then
        rm -f "$archive.part"
        by_hand="put $tarball (MD5 $md5) into $dest by hand and rerun"
        # An empty folder this run created is taken away again: the advice then says to make it.
        if rmdir "$dest" 2>/dev/null; then
            by_hand="mkdir -p $dest, put $tarball (MD5 $md5) into it by hand and rerun"
        fi
        die "could not download $url (offline, proxy or firewall?). Fix the connection and rerun, set CIFAR_URL to a" \
            "mirror or local copy, or $by_hand."
    fi
    got="$(md5_of "$archive.part")"
    if [[ "$got" != "$md5" ]]; then
        rm -f "$archive.part"
        die "MD5 mismatch for $url: got $got, expected $md5; the download is corrupt or not the official" \
            "$tarball (deleted it; rerun to try again)"
    fi
    mv "$archive.part" "$archive"
fi

# Extract next to the destination and move the folder into place, so an interrupted run leaves no partial data.
tmp="$(mktemp -d "$dest/.extract.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$archive" -C "$tmp" || die "$archive is not a readable .tar.gz; delete it and rerun"
[[ -d "$tmp/$folder" ]] || die "$archive has no $folder/ folder: not the CIFAR python tarball"
rm -rf "${dest:?}/$folder"
mv "$tmp/$folder" "$dest/$folder"
found="$(have_files)" || die "$archive lacks some of ${files[*]} in $folder/"
rm -f "$archive"
echo "$dataset ready in $found (use --data_path $dest)"
