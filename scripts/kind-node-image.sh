#!/usr/bin/env bash
# Builds a kind node image for Kubernetes $KUBE_VERSION with no registry: the control-plane
# images (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd, coredns,
# pause) are made locally from binaries built from their Go modules, then imported into the
# node's containerd, as `kind build node-image` does with pulled ones.
#   scripts/kind-node-image.sh TAG KUBE_VERSION BIN_DIR KIND_VERSION
# BIN_DIR holds kubelet, kubeadm, kubectl, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, etcd, coredns and pause (make kind-node-bins).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=$1 kube_version=$2 bin=$3 kind_version=$4
base=circuit-breaker-demo/debian:bookworm
docker image inspect "$tag" >/dev/null 2>&1 && exit 0
export DOCKER_BUILDKIT=0
scripts/base-image.sh "$base"

work=$(mktemp -d "${TMPDIR:-/tmp}/kind-node.XXXXXX")
builder=""
cleanup() {
  [ -z "$builder" ] || docker rm -f "$builder" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# One image per binary: FROM nothing, the binary and a PATH (the kubeadm manifests run
# commands by name). kube-proxy also needs iptables and conntrack, so it starts FROM the base.
binary_image() { # image binary path-in-image
  local root=$work/root-$RANDOM
  install -D -m 0755 "$bin/$2" "$root$3"
  install -d -m 1777 "$root/tmp"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENTRYPOINT [\"$3\"]" - "$1" >/dev/null
}
kube_proxy_image() { # image
  mkdir -p "$work/kube-proxy"
  cp "$bin/kube-proxy" "$work/kube-proxy/"
  docker build -q -t "$1" --build-arg BASE_IMAGE="$base" -f tools/kind/kube-proxy.Dockerfile "$work/kube-proxy" >/dev/null
}

echo "kind-node-image: control-plane images for $kube_version" >&2
images=()
while read -r image; do
  case $image in
    */kube-proxy:*) kube_proxy_image "$image" ;;
    */kube-*:*) name=${image##*/}; name=${name%%:*}; binary_image "$image" "$name" "/usr/local/bin/$name" ;;
    */etcd:*) binary_image "$image" etcd /usr/local/bin/etcd ;;
    */coredns:*) binary_image "$image" coredns /coredns ;;
    */pause:*) binary_image "$image" pause /pause ;;
    *) echo "kind-node-image: no recipe for $image" >&2; exit 1 ;;
  esac
  images+=("$image")
done < <("$bin/kubeadm" config images list --kubernetes-version "$kube_version" 2>/dev/null)

echo "kind-node-image: node base with kind $kind_version's node files" >&2
kind_dir=$(cd "$work" && go mod download -json "sigs.k8s.io/kind@$kind_version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$kind_dir/images/base/files" ] || { echo "kind-node-image: kind's node files not found" >&2; exit 1; }
mkdir -p "$work/context/bin"
cp -r "$kind_dir/images/base/files" "$work/context/files"
chmod -R u+w "$work/context/files"
cp "$bin/kubelet" "$bin/kubeadm" "$bin/kubectl" "$work/context/bin/"
docker build -q -t "$tag-base" --build-arg BASE_IMAGE="$base" --build-arg KUBE_VERSION="$kube_version" \
  -f tools/kind/node.Dockerfile "$work/context" >/dev/null

# containerd's sandbox image, as kind's config names it, is the same pause.
sandbox=$(docker run --rm --entrypoint cat "$tag-base" /etc/containerd/config.toml |
  sed -n 's/^\s*sandbox_image = "\(.*\)"/\1/p')
pause=$(printf '%s\n' "${images[@]}" | grep '/pause:')
if [ -n "$sandbox" ] && [ "$sandbox" != "$pause" ]; then
  docker tag "$pause" "$sandbox"
  images+=("$sandbox")
fi

echo "kind-node-image: importing ${#images[@]} images into the node's containerd" >&2
builder=$(docker run -d --privileged --entrypoint /usr/bin/containerd "$tag-base")
docker exec "$builder" bash -c 'for _ in $(seq 1 100); do [ -S /run/containerd/containerd.sock ] && exit 0; sleep 0.1; done; exit 1'
docker save "${images[@]}" | docker exec -i "$builder" \
  ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --no-unpack --digests - >/dev/null
docker exec "$builder" kill -TERM 1
docker wait "$builder" >/dev/null
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "$builder" "$tag" >/dev/null
docker rmi "${images[@]}" >/dev/null
echo "kind-node-image: built $tag" >&2
