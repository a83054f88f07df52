// localpv provisions the StorageClass of the local test cluster's real node
// (tests/cluster/up): a claim whose pod the scheduler put on that node gets a
// directory under -dir, as a `local` PersistentVolume pinned to the node; a
// released volume of ours is wiped and deleted when its reclaim policy is Delete.
//
// It runs as a process on the same machine as the node, so it creates and
// removes the directories itself (no helper pods). It uses only client-go,
// already in this module for Kubernetes itself, so it adds no dependency.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

const (
	annSelectedNode  = "volume.kubernetes.io/selected-node"
	annProvisioner   = "volume.kubernetes.io/storage-provisioner"
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
)

type provisioner struct {
	client kubernetes.Interface
	name   string // the StorageClass's provisioner field
	node   string
	dir    string
	claims cache.Indexer
	vols   cache.Indexer
	queue  workqueue.TypedRateLimitingInterface[string]
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the provisioner")
	name := flag.String("provisioner", "streamq.dev/local-path", "provisioner name, as in the StorageClass")
	node := flag.String("node", "streamq-node", "the node whose claims this provisions")
	dir := flag.String("dir", "", "directory that holds the volumes")
	klog.InitFlags(nil)
	flag.Parse()
	if *dir == "" {
		klog.Exit("-dir is required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Exit(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		klog.Exit(err)
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	vols := factory.Core().V1().PersistentVolumes().Informer()
	p := &provisioner{
		client: client, name: *name, node: *node, dir: *dir,
		claims: claims.GetIndexer(), vols: vols.GetIndexer(),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	enqueue := func(kind string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				p.queue.Add(kind + "/" + key)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }}
	}
	claims.AddEventHandler(enqueue("pvc"))
	vols.AddEventHandler(enqueue("pv"))
	ctx := context.Background()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	klog.Infof("provisioning %s for node %s in %s", p.name, p.node, p.dir)
	for p.next(ctx) {
	}
}

func (p *provisioner) next(ctx context.Context) bool {
	item, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(item)
	kind, key, _ := strings.Cut(item, "/")
	var err error
	if kind == "pvc" {
		err = p.claim(ctx, key)
	} else {
		err = p.volume(ctx, key)
	}
	if err != nil {
		klog.Errorf("%s %s: %v", kind, key, err)
		p.queue.AddRateLimited(item)
	} else {
		p.queue.Forget(item)
	}
	return true
}

// claim provisions a pending claim of our class that was scheduled to our node.
func (p *provisioner) claim(ctx context.Context, key string) error {
	obj, ok, err := p.claims.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pvc := obj.(*v1.PersistentVolumeClaim)
	if pvc.Spec.VolumeName != "" || pvc.Status.Phase != v1.ClaimPending || pvc.DeletionTimestamp != nil ||
		pvc.Annotations[annProvisioner] != p.name || pvc.Annotations[annSelectedNode] != p.node {
		return nil
	}
	className := ""
	if pvc.Spec.StorageClassName != nil {
		className = *pvc.Spec.StorageClassName
	}
	class, err := p.client.StorageV1().StorageClasses().Get(ctx, className, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if class.Provisioner != p.name {
		return nil
	}
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return fmt.Errorf("block volumes are not supported")
	}
	pvName := "pvc-" + string(pvc.UID)
	path := filepath.Join(p.dir, pvName)
	// World-writable, as local-path-provisioner does: a pod of any uid may write,
	// and the kubelet still applies the pod's fsGroup to a local volume.
	if err := os.MkdirAll(path, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		return err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        pvName,
			Annotations: map[string]string{annProvisionedBy: p.name},
		},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: pvc.Spec.Resources.Requests[v1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              className,
			MountOptions:                  class.MountOptions,
			ClaimRef: &v1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID, ResourceVersion: pvc.ResourceVersion,
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{Local: &v1.LocalVolumeSource{Path: path}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{p.node},
				}},
			}}}},
		},
	}
	if _, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	klog.Infof("provisioned %s for %s at %s", pvName, key, path)
	return nil
}

// volume wipes and deletes a released volume of ours whose policy is Delete.
func (p *provisioner) volume(ctx context.Context, key string) error {
	obj, ok, err := p.vols.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pv := obj.(*v1.PersistentVolume)
	if pv.Annotations[annProvisionedBy] != p.name || pv.Status.Phase != v1.VolumeReleased ||
		pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete || pv.Spec.Local == nil {
		return nil
	}
	path := filepath.Clean(pv.Spec.Local.Path)
	if filepath.Dir(path) != filepath.Clean(p.dir) {
		return fmt.Errorf("refusing to remove %s, outside %s", path, p.dir)
	}
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	err = p.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	klog.Infof("deleted %s and %s", pv.Name, path)
	return nil
}
