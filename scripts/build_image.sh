#!/usr/bin/env bash
# Builds dsflow's job image from containers/Dockerfile where no Docker engine runs and no container registry is
# reachable (as root): the base image comes from Debian's package archive instead of Docker Hub.
#
#   bash scripts/build_image.sh [TAG]     # default TAG dsflow/dsflow:0.1.0-cpu (DSFLOW_TF=gpu: the CUDA build)
#
# Steps, each skipped when its result is already there (a second run with unchanged inputs takes seconds):
#   1. apt-get installs debootstrap and buildah if missing.
#   2. debootstrap: a Debian bookworm root file system (minbase + python3, python3-venv, ca-certificates: what
#      scripts/setup.sh needs to start), upgraded from bookworm-updates and bookworm-security, with the apt
#      settings of Debian's official images (no .debs or package caches kept). Kept as a tar in the cache
#      folder (DSFLOW_IMAGE_CACHE, default .cache/image, git-ignored; the logs go there too) and imported as
#      the local image localhost/dsflow-base:bookworm.
#   3. buildah bud --build-arg BASE=localhost/dsflow-base:bookworm: the Dockerfile runs scripts/setup.sh as on
#      any machine (apt from Debian, pip from PyPI). Skipped while the image's inputs are unchanged: a hash of
#      what the Dockerfile copies, the Dockerfile, DSFLOW_TF and the base, kept as the image's label
#      org.dsflow.inputs. A change under src/ or scripts/, or to pyproject.toml or README.md, builds it anew
#      (the Dockerfile copies them before setup.sh) and removes the image the tag named before.
#
# What buildah needs here (found by trying): `--isolation chroot`, which needs no OCI runtime; the default
# storage (overlay under /var/lib/containers) works as root; `--format docker`, or the Dockerfile's SHELL is
# dropped; and the host's CA bundle mounted over the build's during RUN, because HTTPS from this sandbox goes
# through a TLS-intercepting proxy whose CA only the host trusts (the image keeps Debian's own bundle).
# Run a command in the image, a folder mounted at the same path (as Snakemake does with Apptainer):
#   ctr=$(buildah from --pull=never dsflow/dsflow:0.1.0-cpu)
#   buildah run --isolation chroot -v "$PWD:$PWD" --workingdir "$PWD" "$ctr" -- snakemake --cores 2
#   buildah rm "$ctr"
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-dsflow/dsflow:0.1.0-${DSFLOW_TF:-cpu}}
base=localhost/dsflow-base:bookworm
cache=${DSFLOW_IMAGE_CACHE:-.cache/image}
mirror=${DSFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=python3,python3-venv,ca-certificates
rootfs_tar="$cache/bookworm-rootfs.tar"
started=$SECONDS
step() { echo "build_image: $1 ($((SECONDS - t0)) s)"; }
stamped() { while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done; }  # log lines, timed
failed() { tail -n 30 "$1" >&2; echo "build_image: $2 failed (log: $1)" >&2; exit 1; }
mkdir -p "$cache"

t0=$SECONDS
need=()
for p in debootstrap buildah; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || { echo "build_image: installing ${need[*]} and building need root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  step "installed ${need[*]}"
fi

stamp="bookworm minbase $include $mirror"
if [ ! -s "$rootfs_tar" ] || [ "$(cat "$rootfs_tar.stamp" 2>/dev/null)" != "$stamp" ]; then
  t0=$SECONDS
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  cleanup() {
    for m in proc sys dev/pts; do mountpoint -q "$rootfs/$m" && umount -l "$rootfs/$m"; done
    rm -rf --one-file-system "$rootfs"
  }
  trap cleanup EXIT
  log="$cache/debootstrap.log"
  debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" 2>&1 | stamped >"$log" ||
    failed "$log" debootstrap
  # As in Debian's official images: updates and security in the sources, no .debs or package caches kept.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  clean='rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true'
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<EOF
DPkg::Post-Invoke { "$clean"; };
APT::Update::Post-Invoke { "$clean"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' 2>&1 |
    stamped >>"$log" || failed "$log" "apt-get upgrade in the root file system"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
  : >"$rootfs/etc/resolv.conf"  # a container gets the host's
  tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  echo "$stamp" >"$rootfs_tar.stamp"
  cleanup
  trap - EXIT
  step "debootstrapped bookworm into $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
fi

rootfs_sum=$(sha256sum <"$rootfs_tar" | cut -c1-16)
label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
if [ "$(label "$base" org.dsflow.rootfs)" != "$rootfs_sum" ]; then
  t0=$SECONDS
  ctr=$(buildah from scratch)
  buildah add -q "$ctr" "$rootfs_tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash \
    --label "org.dsflow.rootfs=$rootfs_sum" "$ctr"
  buildah commit -q --rm "$ctr" "$base" >/dev/null
  step "imported it as $base"
fi

# The image's inputs: what the Dockerfile copies (less .dockerignore's __pycache__ and egg-info), the
# Dockerfile, the build argument and the base image.
inputs=$( { find containers/Dockerfile pyproject.toml README.md scripts src -type f ! -path '*/__pycache__/*' \
              ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
            echo "DSFLOW_TF=${DSFLOW_TF:-cpu} $(buildah inspect --type image --format '{{.FromImageID}}' "$base")"
          } | sha256sum | cut -c1-16)
if [ "$(label "$tag" org.dsflow.inputs)" = "$inputs" ]; then
  echo "build_image: $tag is up to date (inputs $inputs)"
  exit 0
fi
old=$(buildah inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null || true)
t0=$SECONDS
ca=()
host_ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$host_ca" ] && ca=(--volume "$host_ca:$host_ca:ro")
log="$cache/build.log"
buildah bud --isolation chroot --format docker "${ca[@]}" --build-arg BASE="$base" \
  --build-arg DSFLOW_TF="${DSFLOW_TF:-cpu}" --label "org.dsflow.inputs=$inputs" \
  -f containers/Dockerfile -t "$tag" . 2>&1 | stamped >"$log" || failed "$log" "buildah bud"
# The image the tag named before, now untagged (kept while a container uses it).
if [ -n "$old" ]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
step "built $tag (inputs $inputs; log: $log)"
echo "build_image: ready: $tag ($((SECONDS - started)) s in all)"
