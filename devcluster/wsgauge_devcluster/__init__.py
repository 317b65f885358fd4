"""wsgauge's local development cluster: a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built by hack/build-k8s.sh) on 127.0.0.1, plus a pod runner
that plays the kubelet and runs the wsgauge sidecar and demo app as local processes."""
