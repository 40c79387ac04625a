# A kind node image built without a registry: kind's own node files (from its Go module) on the
# local debootstrap base, with Debian's systemd, containerd and runc, and kubelet, kubeadm and
# kubectl built from k8s.io/kubernetes. scripts/kind-node-image.sh assembles the context
# (files/, bin/) and afterwards imports the control-plane images into containerd.
ARG BASE_IMAGE=circuit-breaker-demo/debian:bookworm
FROM ${BASE_IMAGE}
COPY files/usr/local/bin/ /usr/local/bin/
# Packages first: kind's /etc/containerd/config.toml would make dpkg ask about a changed conffile.
RUN chmod 0755 /usr/local/bin/* \
    && DEBIAN_FRONTEND=noninteractive clean-install \
      systemd \
      containerd runc containernetworking-plugins \
      conntrack iptables nftables iproute2 ethtool util-linux mount kmod socat \
      libseccomp2 pigz bash ca-certificates curl jq procps
COPY files/kind/ /kind/
COPY files/etc/ /etc/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN chmod 0755 /kind/bin/* \
    && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
    && rm -f /lib/systemd/system/multi-user.target.wants/* \
    && rm -f /etc/systemd/system/*.wants/* \
    && rm -f /lib/systemd/system/local-fs.target.wants/* \
    && rm -f /lib/systemd/system/sockets.target.wants/*udev* \
    && rm -f /lib/systemd/system/sockets.target.wants/*initctl* \
    && rm -f /lib/systemd/system/basic.target.wants/* \
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \
    && ln -sf /usr/lib/systemd/systemd /sbin/init \
    # kind's units and config expect containerd in /usr/local/bin and CNI plugins in /opt/cni/bin.
    && ln -s /usr/bin/containerd /usr/local/bin/containerd \
    && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \
    # Without this, containerd fails to set oom_score_adj in this VM and the API server never
    # becomes healthy ("failed to update /proc/self/oom_score_adj: Permission denied").
    && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \
    && ctr oci spec \
      | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \
    && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
    && systemctl mask systemd-binfmt.service \
    && mkdir -p /etc/kubernetes/manifests
# Last, so that a new Kubernetes build reuses the package layer above.
ARG KUBE_VERSION
COPY bin/ /usr/bin/
RUN chmod 0755 /usr/bin/kubelet /usr/bin/kubeadm /usr/bin/kubectl \
    && echo "${KUBE_VERSION}" > /kind/version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
