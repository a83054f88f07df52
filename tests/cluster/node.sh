# shellcheck shell=bash disable=SC2154
# The real node beside the kwok ones, sourced by tests/cluster/up and down.
#
# Everything of the node lives in its own network namespace, so its iptables
# rules (kube-proxy's, the CNI bridge's), its bridge and its ports never meet
# the host's or another instance's:
#
#   host netns                          node netns ($NODE_NETNS)
#   127.0.0.1: etcd, apiserver, redis   containerd, kubelet, kube-proxy, CoreDNS
#   $NODE_VETH $NODE_HOST_IP  <-veth->  eth0 $NODE_IP
#                                       $NODE_BRIDGE, pods in $POD_CIDR
#
# The host answers the node on $NODE_HOST_IP only for the apiserver and Redis
# ports and the harness port, where a test serves its pods, such as the closed
# loop's HTTP handler (DNAT to 127.0.0.1, route_localnet on the veth); anything else from the
# node is dropped, and the host does not forward, so pods reach nothing else.
# The node's names, addresses, directories and cgroup are derived from the
# state directory, so two instances (two STREAMQ_CLUSTER_DIRs) never collide.
#
# Needs from the caller: $state $cache $here, the ports, and for node_up the
# functions log die start running wait_for cert.

# shellcheck disable=SC2034 # used by up
REAL_NODE=${STREAMQ_REAL_NODE:-1}
node_dir=$state/node
node_id=$(printf %s "$state" | sha256sum | cut -c1-8)
NODE_NAME=${STREAMQ_NODE_NAME:-streamq-node}
# One octet per instance picks its addresses; override it if two state dirs hash alike.
NODE_INDEX=${STREAMQ_NODE_INDEX:-$((16#${node_id:0:2}))}
NODE_NETNS=${STREAMQ_NODE_NETNS:-streamq-$node_id}
NODE_VETH=${STREAMQ_NODE_VETH:-sq$node_id}
NODE_HOST_IP=${STREAMQ_NODE_HOST_IP:-172.30.$NODE_INDEX.1}
NODE_IP=${STREAMQ_NODE_IP:-172.30.$NODE_INDEX.2}
POD_CIDR=${STREAMQ_POD_CIDR:-10.250.$NODE_INDEX.0/24}
NODE_BRIDGE=${STREAMQ_NODE_BRIDGE:-sqbr0}
NODE_CGROUP=${STREAMQ_NODE_CGROUP:-/streamq-$node_id}
NODE_CHAIN=STREAMQ-$node_id
# A test's own endpoint for its pods, on 127.0.0.1 (tests/support/real_node.rs).
HARNESS_PORT=${STREAMQ_HARNESS_PORT:-16380}
KUBELET_PORT=${STREAMQ_KUBELET_PORT:-10250}
KUBELET_HEALTHZ_PORT=${STREAMQ_KUBELET_HEALTHZ_PORT:-10248}
KUBE_PROXY_METRICS_PORT=${STREAMQ_KUBE_PROXY_METRICS_PORT:-10249}
KUBE_PROXY_HEALTHZ_PORT=${STREAMQ_KUBE_PROXY_HEALTHZ_PORT:-10256}
COREDNS_PORT=${STREAMQ_COREDNS_PORT:-53}
COREDNS_HEALTH_PORT=${STREAMQ_COREDNS_HEALTH_PORT:-8080}
COREDNS_READY_PORT=${STREAMQ_COREDNS_READY_PORT:-8181}
CONTAINERD_SOCKET=${STREAMQ_CONTAINERD_SOCKET:-$node_dir/containerd/containerd.sock}

in_node() { nsenter --net="/run/netns/$NODE_NETNS" -- "$@"; }

# ------------------------------------------------------------------ up
node_up() {
  local bin_node=$cache/containerd-$CONTAINERD_VERSION
  local bin_coredns=$cache/coredns-$COREDNS_VERSION bin_k8s=$cache/k8s-$KUBERNETES_VERSION
  local t0=$SECONDS
  local pkgs=()
  command -v runc >/dev/null || pkgs+=(runc)
  command -v iptables >/dev/null || pkgs+=(iptables)
  command -v nsenter >/dev/null || pkgs+=(util-linux)
  command -v ip >/dev/null || pkgs+=(iproute2)
  command -v conntrack >/dev/null || pkgs+=(conntrack)
  [[ -e /bin/busybox ]] || pkgs+=(busybox-static)
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]} from Debian packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if ! grep -qa -- --kubelet-client-certificate "/proc/$(cat "$state/pids/kube-apiserver.pid")/cmdline" 2>/dev/null; then
    log "warning: the running kube-apiserver predates the real node (no --kubelet-client-certificate):" \
      "kubectl logs/exec on $NODE_NAME fail until tests/cluster/down and up restart it"
  fi
  mkdir -p "$node_dir"/{containerd,kubelet,cni/net.d,cni/ipam,volumes,runc,logs/pods}
  node_network
  node_cgroups
  node_certs
  node_configs
  # /var/log/containers is the one path the kubelet does not let us move; its
  # links point into our pod log dir and go with their containers.
  start containerd nsenter --net="/run/netns/$NODE_NETNS" -- "$bin_node/containerd" --config "$node_dir/containerd.toml"
  wait_for containerd 60 "$bin_node/ctr" --address "$CONTAINERD_SOCKET" version
  "$here/images/build" >/dev/null
  start kubelet nsenter --net="/run/netns/$NODE_NETNS" -- "$bin_k8s/kubelet" \
    --config "$node_dir/kubelet.yaml" --kubeconfig "$state/kubelet.kubeconfig" \
    --root-dir "$node_dir/kubelet" --cert-dir "$node_dir/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "streamq.dev/real-node=true,type=real" --v 1
  start kube-proxy nsenter --net="/run/netns/$NODE_NETNS" -- "$bin_k8s/kube-proxy" \
    --config "$node_dir/kube-proxy.yaml" --v 1
  start coredns nsenter --net="/run/netns/$NODE_NETNS" -- "$bin_coredns/coredns" \
    -conf "$node_dir/Corefile" -pidfile ""
  start localpv "$cache/localpv-$(localpv_key)/localpv" --kubeconfig "$state/localpv.kubeconfig" \
    --node "$NODE_NAME" --dir "$node_dir/volumes" --provisioner streamq.dev/local-path
  node_objects
  wait_for "kubelet node Ready" 120 kubectl wait node "$NODE_NAME" --for=condition=Ready --timeout=2s
  wait_for coredns 60 in_node curl -fsS --max-time 2 "http://$NODE_IP:$COREDNS_READY_PORT/ready"
  wait_for kube-proxy 60 in_node curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
  log "real node $NODE_NAME ready in $((SECONDS - t0))s: node IP $NODE_IP (netns $NODE_NETNS), pods $POD_CIDR, DNS $NODE_IP:$COREDNS_PORT"
}

# The source hash that keys the cached localpv binary (tests/cluster/build builds it).
localpv_key() { cat "$here/tools/localpv/main.go" "$here/tools/go.sum" | sha256sum | cut -c1-12; }

node_network() {
  if ! ip netns list | grep -qw "^$NODE_NETNS"; then
    local clash
    clash=$(ip -o addr show | awk -v a="${NODE_HOST_IP%.*}." 'index($4, a) == 1 {print $2}')
    [[ -z $clash ]] || die "addresses ${NODE_HOST_IP%.*}.0/24 are already on $clash: set STREAMQ_NODE_INDEX to another 0-255"
    log "creating netns $NODE_NETNS, veth $NODE_VETH $NODE_HOST_IP <-> $NODE_IP"
    ip netns add "$NODE_NETNS"
    ip link add "$NODE_VETH" type veth peer name eth0 netns "$NODE_NETNS"
    ip addr add "$NODE_HOST_IP/30" dev "$NODE_VETH"
    ip link set "$NODE_VETH" up
    ip -n "$NODE_NETNS" link set lo up
    ip -n "$NODE_NETNS" addr add "$NODE_IP/30" dev eth0
    ip -n "$NODE_NETNS" link set eth0 up
    ip -n "$NODE_NETNS" route add default via "$NODE_HOST_IP"
    ip route add "$POD_CIDR" via "$NODE_IP" dev "$NODE_VETH"
    # Inside the node: forward between eth0 and the bridge, and let bridged
    # traffic (pod to pod through a Service) pass kube-proxy's iptables.
    in_node sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    # The host: 127.0.0.1 may be the DNAT target of packets from the veth.
    sysctl -qw "net.ipv4.conf.$NODE_VETH.route_localnet=1"
  fi
  # The host's rules: only the apiserver, Redis and the harness port, nothing else, for the node.
  local p
  iptables -t nat -N "$NODE_CHAIN" 2>/dev/null || true
  for p in "$APISERVER_PORT" "$REDIS_PORT" "$HARNESS_PORT"; do
    local dnat=(-d "$NODE_HOST_IP" -p tcp --dport "$p" -j DNAT --to-destination "127.0.0.1:$p")
    iptables -t nat -C "$NODE_CHAIN" "${dnat[@]}" 2>/dev/null || iptables -t nat -A "$NODE_CHAIN" "${dnat[@]}"
  done
  if ! iptables -nL "$NODE_CHAIN" >/dev/null 2>&1; then
    iptables -t nat -I PREROUTING -i "$NODE_VETH" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS"
    iptables -N "$NODE_CHAIN"
    iptables -A "$NODE_CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT
    iptables -A "$NODE_CHAIN" -p icmp -j ACCEPT
    iptables -A "$NODE_CHAIN" -j DROP
    iptables -I INPUT -i "$NODE_VETH" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS"
    iptables -I FORWARD -i "$NODE_VETH" -j DROP -m comment --comment "streamq node $NODE_NETNS"
  fi
  # This machine's own processes reach the same two ports at the address the
  # pods use, so one Redis URL serves an operator outside the cluster and its pods.
  local out=(-d "$NODE_HOST_IP" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS")
  iptables -t nat -C OUTPUT "${out[@]}" 2>/dev/null || iptables -t nat -I OUTPUT "${out[@]}"
}

# The parent of every pod cgroup, in each v1 hierarchy (the kubelet wants it to exist).
node_cgroups() {
  local h
  for h in /sys/fs/cgroup/*; do
    [[ -d $h && $h != */unified ]] || continue
    mkdir -p "$h$NODE_CGROUP"
    # A new v1 cpuset has no CPUs or memory nodes: give it the root's.
    if [[ -f $h/cpuset.cpus ]]; then
      [[ -n $(cat "$h$NODE_CGROUP/cpuset.cpus") ]] || cat "$h/cpuset.cpus" > "$h$NODE_CGROUP/cpuset.cpus"
      [[ -n $(cat "$h$NODE_CGROUP/cpuset.mems") ]] || cat "$h/cpuset.mems" > "$h$NODE_CGROUP/cpuset.mems"
    fi
  done
}

node_certs() {
  cert kubelet "system:node:$NODE_NAME" system:nodes
  cert kube-proxy system:kube-proxy ""
  cert coredns streamq-coredns ""
  cert localpv streamq-localpv system:masters
  local k
  # The node's components reach the apiserver through the veth; its
  # certificate names `kubernetes`, which they ask for (tls-server-name).
  for k in kubelet kube-proxy coredns; do
    put "$state/$k.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: streamq-test
  cluster:
    server: https://$NODE_HOST_IP:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
    tls-server-name: kubernetes
users:
- name: $k
  user:
    client-certificate: $pki/$k.crt
    client-key: $pki/$k.key
contexts:
- name: streamq-test
  context: {cluster: streamq-test, user: $k}
current-context: streamq-test
KC
  done
  kubeconfig localpv
}

# put FILE: writes stdin to FILE unless FILE already holds exactly that
# (kube-proxy exits when its configuration file changes, even to the same bytes).
put() {
  local tmp=$1.tmp
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

node_configs() {
  local bin_cni=$cache/cni-plugins-$CNI_PLUGINS_VERSION
  put "$node_dir/containerd.toml" <<TOML
# Generated by tests/cluster/up. Every path is under $node_dir.
version = 3
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
temp = "$node_dir/containerd/tmp"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$CONTAINERD_SOCKET.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins.'io.containerd.internal.v1.opt']
  path = "$node_dir/containerd/opt"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:$PAUSE_VERSION"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = ""
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  disable_apparmor = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj (runc failed on the sandbox's -998): never ask below ours.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      disable_pause_image_pull = true
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "${STREAMQ_RUNC:-$(command -v runc)}"
        Root = "$node_dir/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$bin_cni"]
    conf_dir = "$node_dir/cni/net.d"
    max_conf_num = 1
    use_internal_loopback = true
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  put "$node_dir/cni/net.d/10-streamq.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "streamq-$node_id",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
               "dataDir": "$node_dir/cni/ipam"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
  # Pods with dnsPolicy Default get this too: only the cluster's DNS exists here.
  echo "nameserver $NODE_IP" | put "$node_dir/resolv.conf"
  put "$node_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine is cgroup v1, which Kubernetes 1.35+ refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
# Every pod cgroup lives under one parent of ours in each v1 hierarchy.
cgroupRoot: $NODE_CGROUP
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
# No CAP_SYS_RESOURCE here: the kubelet cannot make itself -999.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
imageServiceEndpoint: unix://$CONTAINERD_SOCKET
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $node_dir/resolv.conf
registerNode: true
registerWithTaints:
- {key: streamq.dev/real-node, value: "true", effect: NoSchedule}
podLogsDir: $node_dir/logs/pods
volumePluginDir: $node_dir/kubelet/volume-plugins
# No registry can be reached, so no image may ever be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The disk is shared with other work; evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
serializeImagePulls: false
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 20s
shutdownGracePeriod: 0s
YAML
  put "$node_dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
oomScoreAdj: 0
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
# nf_conntrack_max is the host's, not the node's: leave it alone.
conntrack: {maxPerCore: 0, min: 0}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 0s}
YAML
  put "$node_dir/Corefile" <<CORE
cluster.local:$COREDNS_PORT in-addr.arpa:$COREDNS_PORT ip6.arpa:$COREDNS_PORT {
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready $NODE_IP:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/coredns.kubeconfig streamq-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
# No upstream resolver may be reached: every other name does not exist.
.:$COREDNS_PORT {
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
CORE
}

# Cluster objects the node needs: RBAC for CoreDNS, the `kubernetes` Service's
# EndpointSlice (the apiserver runs with --endpoint-reconciler-type none; the
# host's veth address, DNATed to the apiserver), the admission policy that
# sends a labelled namespace's pods to the node, and the StorageClass.
node_objects() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "streamq:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "streamq:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "streamq:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: streamq-coredns}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes}
addressType: IPv4
endpoints:
- addresses: [$NODE_HOST_IP]
  conditions: {ready: true}
ports:
- {name: https, port: $APISERVER_PORT, protocol: TCP}
---
# Pods created in a namespace labelled streamq.dev/real-node=true get the
# node's toleration and selector, so whatever the operator creates there (the
# managed Redis StatefulSet, worker Deployments) runs on the real node, and
# pods elsewhere stay on kwok.
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: "streamq-real-node"}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        (has(object.spec.tolerations) ? [] : [JSONPatch{op: "add", path: "/spec/tolerations", value: []}]) +
        [JSONPatch{op: "add", path: "/spec/tolerations/-", value: Object.spec.tolerations{key: "streamq.dev/real-node", operator: "Exists", effect: "NoSchedule"}}] +
        (has(object.spec.nodeSelector) ? [] : [JSONPatch{op: "add", path: "/spec/nodeSelector", value: {}}]) +
        [JSONPatch{op: "add", path: "/spec/nodeSelector/" + jsonpatch.escapeKey("streamq.dev/real-node"), value: "true"}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: "streamq-real-node"}
spec:
  policyName: "streamq-real-node"
  matchResources:
    namespaceSelector:
      matchLabels: {streamq.dev/real-node: "true"}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "${STREAMQ_DEFAULT_STORAGE_CLASS:-false}"}
provisioner: streamq.dev/local-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowedTopologies:
- matchLabelExpressions:
  - {key: kubernetes.io/hostname, values: [$NODE_NAME]}
YAML
}

# ------------------------------------------------------------------ down
# Stops the node's daemons and every container, and removes what the node
# put on the host: mounts under the state dir, the netns (with its bridge and
# iptables rules), the veth, the host's rules, the pod cgroups, the log links.
node_down() {
  local ctr=$cache/containerd-$CONTAINERD_VERSION/ctr
  stop_daemon localpv; stop_daemon coredns; stop_daemon kube-proxy; stop_daemon kubelet
  # Containers outlive containerd (each has a shim): kill them through it.
  if running containerd && [[ -S $CONTAINERD_SOCKET ]]; then
    local t
    for t in $("$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks ls -q 2>/dev/null); do
      "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
    for _ in $(seq 1 50); do
      "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks ls 2>/dev/null | grep -q RUNNING || break
      sleep 0.1
    done
    for t in $("$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks ls -q 2>/dev/null); do
      "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    # No container or sandbox record outlives its netns: the next up's kubelet
    # starts the node's pods afresh. The images stay.
    for t in $("$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io sandboxes ls -q 2>/dev/null); do
      "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io sandboxes rm -f "$t" >/dev/null 2>&1 || true
    done
    for t in $("$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io containers ls -q 2>/dev/null); do
      "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io containers rm "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_daemon containerd
  # A shim or container left (containerd was killed before): by their paths, only ours.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCKET" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -d /sys/fs/cgroup/pids$NODE_CGROUP ]]; then
    find "/sys/fs/cgroup/pids$NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null |
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  # Mounts under the state dir (rootfs overlays, volumes, netns files), deepest first.
  local m
  for _ in 1 2 3; do
    mapfile -t mounts < <(awk -v d="$state/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#mounts[@]})) || break
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  # The pod cgroups, deepest first, in every hierarchy.
  local h
  for h in /sys/fs/cgroup/*; do
    [[ -d $h$NODE_CGROUP ]] && find "$h$NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if ip netns list 2>/dev/null | grep -qw "^$NODE_NETNS"; then
    echo "[cluster/down] removing netns $NODE_NETNS" >&2
    ip netns delete "$NODE_NETNS"
  fi
  ip link delete "$NODE_VETH" 2>/dev/null || true
  while iptables -t nat -D PREROUTING -i "$NODE_VETH" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS" 2>/dev/null; do :; done
  while iptables -t nat -D OUTPUT -d "$NODE_HOST_IP" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS" 2>/dev/null; do :; done
  while iptables -D INPUT -i "$NODE_VETH" -j "$NODE_CHAIN" -m comment --comment "streamq node $NODE_NETNS" 2>/dev/null; do :; done
  while iptables -D FORWARD -i "$NODE_VETH" -j DROP -m comment --comment "streamq node $NODE_NETNS" 2>/dev/null; do :; done
  iptables -t nat -F "$NODE_CHAIN" 2>/dev/null && iptables -t nat -X "$NODE_CHAIN" 2>/dev/null || true
  iptables -F "$NODE_CHAIN" 2>/dev/null && iptables -X "$NODE_CHAIN" 2>/dev/null || true
  # The kubelet's links in /var/log/containers into our pod logs.
  find /var/log/containers -maxdepth 1 -type l -lname "$node_dir/*" -delete 2>/dev/null || true
  # libcni's result cache (its directory is not configurable), only our network's;
  # the shims' socket directory once no instance has a shim left.
  rm -f /var/lib/cni/results/"streamq-$node_id"-* 2>/dev/null || true
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  # The containers are gone, so are their addresses. (containerd-shim sockets
  # live in /run/containerd/s; each shim removes its own on exit.)
  rm -rf "$node_dir/containerd/state" "$node_dir/runc" "$node_dir/cni/ipam"
}
