#!/usr/bin/env bash
# Pack a root filesystem directory into a single-layer image tarball in `docker save`
# format (manifest.json + config + layer.tar), without a registry or a container engine.
# `ctr -n k8s.io images import`, `podman load` and `docker load` all read it.
#
#   make-image.sh ROOTFS_DIR NAME:TAG OUT.tar [ENTRYPOINT [ARG...]]
#
# The layer is reproducible: sorted names, owner 0:0, mtime 0.
set -euo pipefail
(( $# >= 3 )) || { echo "usage: $0 ROOTFS_DIR NAME:TAG OUT.tar [ENTRYPOINT [ARG...]]" >&2; exit 2; }
rootfs="$1" ref="$2" out="$3"
shift 3
[[ -d "$rootfs" ]] || { echo "make-image: $rootfs is not a directory" >&2; exit 1; }

json_str() {  # JSON string literal of $1 (names, paths, arguments: no control characters)
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}
json_array() {
    local first=1 a
    printf '['
    for a in "$@"; do
        ((first)) || printf ','
        first=0
        json_str "$a"
    done
    printf ']'
}

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --format=gnu -cf "$stage/layer.tar" .
layer_sha="$(sha256sum "$stage/layer.tar" | cut -d' ' -f1)"
mkdir "$stage/$layer_sha"
mv "$stage/layer.tar" "$stage/$layer_sha/layer.tar"

entry='null'
(( $# > 0 )) && entry="$(json_array "$@")"
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",%s%s%s\n' \
    '"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],' \
    "\"Entrypoint\":${entry},\"WorkingDir\":\"/\"}," \
    "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:${layer_sha}\"]}}" \
    >"$stage/config.json"
config_sha="$(sha256sum "$stage/config.json" | cut -d' ' -f1)"
mv "$stage/config.json" "$stage/${config_sha}.json"
printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]\n' \
    "$config_sha" "$(json_str "$ref")" "$layer_sha" >"$stage/manifest.json"
printf '{"%s":{"%s":"%s"}}\n' "${ref%:*}" "${ref##*:}" "$layer_sha" >"$stage/repositories"

mkdir -p "$(dirname "$out")"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -cf "$out.tmp" manifest.json repositories "${config_sha}.json" "$layer_sha"
mv "$out.tmp" "$out"
echo "$out"
