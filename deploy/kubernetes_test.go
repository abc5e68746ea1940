package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const kubeDir = "kubernetes"

// The memory bound (README, "Sizing") is runPeakRSS, what does not grow with the keys,
// plus, for each enabled detector, its bytesPerKey and samplesPerKey for every key it
// may track (its max_keys). runPeakRSS rounds up the highest peak resident set
// cmd/gatewatch's BenchmarkRunMemory measured for gatewatch run reading a backlog with
// the defaults, ClickHouse as the store and no GOMEMLIMIT (607-710 MiB over six runs
// with 348,216 keys tracked; 672-787 MiB over six as a cluster replica holding all 128
// tasks of 32 internal partitions, whose detectors track a share of max_keys each;
// 2026-12-06, alike with transparent huge pages at madvise and at never); it holds for
// an archive buffer up to the default it ran with, measuredBufferSize.
//
// lookupCaches is what the engines' caches of keys looked up and evicted may grow to
// under a flood of made-up keys, which a backlog does not reach: two 8-byte hash sets
// with room for four times max_keys each (at most 16 MiB each), per engine; with the
// manifests' 32 internal partitions, 2 MiB for each client task and 0.5 for each route
// task.
const (
	runPeakRSS         = 800 << 20
	measuredBufferSize = 500_000
	lookupCaches       = 80 << 20
)

// samplesPerKey is the most evidence samples (paths, client IPs) each detector but
// new_country keeps, per key of its max_keys (detectors.samplesPerKey): ordinary
// traffic leaves less, and the Memory benchmarks' figures include what it leaves, but
// a client that sends paths built to displace one another fills it.
const samplesPerKey = 256

// bytesPerKey is each detector's heap per tracked key, as its Memory benchmark in
// ./detectors measures it (go test ./detectors -run '^$' -bench 'Memory$' -benchtime 1x
// -count 3; the same to the byte in every run), rounded up.
var bytesPerKey = map[string]int64{
	"new_country":          240,
	"token_reuse":          900,
	"forbidden_burst":      650,
	"quiet_endpoint_spike": 2910,
	"object_enumeration":   540,
	"auth_failure_spray":   290,
	"privilege_anomaly":    1660,
	"client_volume_spike":  610,
	"route_scan":           310,
}

// kubeDecoder decodes manifests strictly into the k8s.io/api types: an unknown or
// duplicated field, or a kind these types do not have, is an error.
func kubeDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
}

// decodeManifests decodes every document of a YAML stream.
func decodeManifests(t *testing.T, name string, stream []byte) []runtime.Object {
	t.Helper()
	dec := kubeDecoder(t)
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var out []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if obj.GetObjectKind().GroupVersionKind().Empty() {
			t.Errorf("%s: a %v without apiVersion and kind", name, gvk)
		}
		out = append(out, obj)
	}
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for l := range bytes.SplitSeq(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// TestKubernetesManifests: every manifest file decodes strictly into the Kubernetes API
// types, and the kustomization names every one of them.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(kubeDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var kust struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(kubeDir, "kustomization.yaml"))), &kust); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		base := filepath.Base(f)
		if base == "kustomization.yaml" || base == "gatewatch.yaml" { // kustomize's own file; the config the ConfigMap holds
			continue
		}
		if objs := decodeManifests(t, f, []byte(readFile(t, f))); len(objs) == 0 {
			t.Errorf("%s holds no manifest", f)
		}
		if !slices.Contains(kust.Resources, base) {
			t.Errorf("kustomization.yaml does not list %s", base)
		}
	}
}

// rendered is what kubectl kustomize makes of deploy/kubernetes, by kind.
type rendered struct {
	namespace   *corev1.Namespace
	config      *corev1.ConfigMap
	service     *corev1.Service
	statefulSet *appsv1.StatefulSet
	pdb         *policyv1.PodDisruptionBudget
	job         *batchv1.Job
	all         []runtime.Object
}

func kustomize(t *testing.T) *rendered {
	t.Helper()
	kubectl := requireTool(t, "kubectl")
	out := run(t, ".", nil, kubectl, "kustomize", kubeDir)
	r := &rendered{all: decodeManifests(t, "kubectl kustomize "+kubeDir, []byte(out))}
	for _, o := range r.all {
		switch o := o.(type) {
		case *corev1.Namespace:
			r.namespace = o
		case *corev1.ConfigMap:
			r.config = o
		case *corev1.Service:
			r.service = o
		case *appsv1.StatefulSet:
			r.statefulSet = o
		case *policyv1.PodDisruptionBudget:
			r.pdb = o
		case *batchv1.Job:
			r.job = o
		}
	}
	if r.namespace == nil || r.config == nil || r.service == nil || r.statefulSet == nil || r.pdb == nil || r.job == nil {
		t.Fatalf("kubectl kustomize renders %d objects, want a Namespace, ConfigMap, Service, StatefulSet, PodDisruptionBudget and Job", len(r.all))
	}
	return r
}

// TestKustomization: the rendered manifests fit together and with the config they
// mount: gatewatch.yaml passes check-config; the pods read it, the secrets and data_dir
// where it says; the probes, the Service and Prometheus's annotations name admin.listen's
// port; replicas share one consumer group; the pods run locked down; the memory limit
// holds the bound the config implies.
func TestKustomization(t *testing.T) {
	r := kustomize(t)
	for _, o := range r.all {
		if o == r.namespace {
			continue
		}
		if ns := o.(interface{ GetNamespace() string }).GetNamespace(); ns != r.namespace.Name {
			t.Errorf("%T in namespace %q, want %q", o, ns, r.namespace.Name)
		}
	}
	configText := readFile(t, filepath.Join(kubeDir, "gatewatch.yaml"))
	if got := r.config.Data["gatewatch.yaml"]; got != configText {
		t.Errorf("the ConfigMap's gatewatch.yaml differs from %s/gatewatch.yaml", kubeDir)
	}
	if r.config.Name != "gatewatch-config" {
		t.Errorf("ConfigMap %s, want gatewatch-config without a hash suffix: pods see its updates, gatewatch reloads them", r.config.Name)
	}

	// The config passes check-config with the Secret's files where the pods have them.
	secretDir := "/run/secrets/gatewatch/"
	keys := secretKeys(configText, secretDir)
	if len(keys) == 0 {
		t.Fatalf("gatewatch.yaml reads no secret under %s", secretDir)
	}
	dir := t.TempDir()
	secrets := secretFiles(t, filepath.Join(dir, "secrets"), keys...)
	effective := checkConfig(t, dir, "gatewatch.yaml", strings.ReplaceAll(configText, secretDir, secrets+"/"))
	var cfg struct {
		Ingest struct {
			Kafka struct {
				Group string `json:"group"`
			} `json:"kafka"`
		} `json:"ingest"`
		Detectors map[string]any `json:"detectors"`
		Store     struct {
			DataDir    string `json:"data_dir"`
			ClickHouse *struct {
				BufferSize int64 `json:"buffer_size"`
			} `json:"clickhouse"`
		} `json:"store"`
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
	}
	if err := yaml.Unmarshal([]byte(effective), &cfg); err != nil {
		t.Fatalf("check-config's output: %v", err)
	}
	if cfg.Ingest.Kafka.Group == "" || cfg.Store.ClickHouse == nil {
		t.Errorf("the config has group %q and ClickHouse %v: replicas must share one consumer group and one store", cfg.Ingest.Kafka.Group, cfg.Store.ClickHouse)
	}
	_, adminPort, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		t.Fatalf("admin.listen %q: %v", cfg.Admin.Listen, err)
	}

	sts := r.statefulSet
	pod := sts.Spec.Template.Spec
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas < 2 {
		t.Errorf("StatefulSet replicas %v, want at least 2 members of the consumer group", sts.Spec.Replicas)
	}
	podLabels := labels.Set(sts.Spec.Template.Labels)
	for what, sel := range map[string]map[string]string{
		"StatefulSet selector": sts.Spec.Selector.MatchLabels, "Service selector": r.service.Spec.Selector, "PodDisruptionBudget selector": r.pdb.Spec.Selector.MatchLabels,
	} {
		if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(podLabels) {
			t.Errorf("%s %v does not select the pods (%v)", what, sel, podLabels)
		}
		if labels.SelectorFromSet(sel).Matches(labels.Set(r.job.Spec.Template.Labels)) {
			t.Errorf("%s %v selects the migration Job's pod too", what, sel)
		}
	}
	if sts.Spec.ServiceName != r.service.Name || r.service.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("StatefulSet serviceName %q, Service %s clusterIP %q: want the headless governing Service", sts.Spec.ServiceName, r.service.Name, r.service.Spec.ClusterIP)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v, want more than run's 30s ordered shutdown", g)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want gatewatch alone", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !strings.Contains(c.Image, "/") || !strings.Contains(c.Image, ":") {
		t.Errorf("image %q: want the registry image the kustomization's images sets", c.Image)
	}
	if len(c.Args) < 3 || c.Args[0] != "run" || c.Args[1] != "--config" {
		t.Fatalf("args %q, want run --config FILE", c.Args)
	}
	checkMounts(t, "StatefulSet", pod, c, c.Args[2], r.config.Name, secretDir, configText)
	data := mountAt(c, cfg.Store.DataDir)
	if data == nil || !slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == data.Name }) {
		t.Errorf("data_dir %s is not on a volume claimed per replica: mounts %+v", cfg.Store.DataDir, c.VolumeMounts)
	}

	// admin.listen's port: the container port, the probes, the Service, the scrape annotations.
	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "admin" })
	if i < 0 || strconv.Itoa(int(c.Ports[i].ContainerPort)) != adminPort {
		t.Fatalf("container ports %+v, want admin on admin.listen's port %s", c.Ports, adminPort)
	}
	for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz", "startup": "/healthz"}[what]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe %+v, want GET %s on the admin port", what, p, want)
		}
	}
	if len(r.service.Spec.Ports) != 1 || r.service.Spec.Ports[0].TargetPort.String() != "admin" || strconv.Itoa(int(r.service.Spec.Ports[0].Port)) != adminPort {
		t.Errorf("Service ports %+v, want the admin port", r.service.Spec.Ports)
	}
	if a := r.service.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != adminPort || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("Service annotations %v, want Prometheus to scrape /metrics on %s", a, adminPort)
	}
	if !r.service.Spec.PublishNotReadyAddresses {
		t.Error("the Service does not publish not-ready pods: their metrics say why they are not ready")
	}
	if r.pdb.Spec.MaxUnavailable == nil || r.pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1", r.pdb.Spec.MaxUnavailable)
	}

	checkLockedDown(t, "StatefulSet", pod)
	checkLockedDown(t, "Job", r.job.Spec.Template.Spec)

	// Resources: requests and limits, memory guaranteed, and room for the bound.
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || lim.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
		t.Fatalf("resources %+v, want cpu and memory requests and limits", c.Resources)
	}
	if req.Memory().Cmp(*lim.Memory()) != 0 {
		t.Errorf("memory request %s and limit %s differ: a replica that may be squeezed out of memory it was promised loses its state", req.Memory(), lim.Memory())
	}
	goMemLimit := envBytes(t, c, "GOMEMLIMIT")
	if goMemLimit >= lim.Memory().Value()*9/10 {
		t.Errorf("GOMEMLIMIT %d is not below 90%% of the memory limit %s", goMemLimit, lim.Memory())
	}
	if b := cfg.Store.ClickHouse.BufferSize; b <= 0 || b > measuredBufferSize {
		t.Fatalf("store.clickhouse.buffer_size %d: the memory bound was measured with at most %d (BenchmarkRunMemory; measure again for more)", b, measuredBufferSize)
	}
	bound := memoryBound(t, cfg.Detectors)
	if bound > goMemLimit {
		t.Errorf("the config's memory bound is %d MiB (README, Sizing), more than GOMEMLIMIT %d MiB: raise the limits with max_keys", bound>>20, goMemLimit>>20)
	}
	if lim.Memory().Value() > bound*3/2 {
		t.Errorf("the memory limit %s is more than half as much again as the bound, %d MiB: lower it, or the bound is stale", lim.Memory(), bound>>20)
	}
	t.Logf("memory bound %d MiB, GOMEMLIMIT %d MiB, limit %s", bound>>20, goMemLimit>>20, lim.Memory())

	// The migration Job: same image, config and secrets, gatewatch migrate.
	jpod := r.job.Spec.Template.Spec
	if len(jpod.Containers) != 1 {
		t.Fatalf("the Job has %d containers", len(jpod.Containers))
	}
	jc := jpod.Containers[0]
	if jc.Image != c.Image || !slices.Equal(jc.Args, []string{"migrate", "--config", c.Args[2]}) {
		t.Errorf("Job image %s args %q, want %s migrate --config %s", jc.Image, jc.Args, c.Image, c.Args[2])
	}
	if jpod.RestartPolicy != corev1.RestartPolicyOnFailure && jpod.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("Job restartPolicy %s", jpod.RestartPolicy)
	}
	checkMounts(t, "Job", jpod, jc, jc.Args[2], r.config.Name, secretDir, configText)
}

// secretKeys returns the files under dir that the config reads (comments left out).
func secretKeys(config, dir string) []string {
	re := regexp.MustCompile(`(?m)^[^#\n]*` + regexp.QuoteMeta(dir) + `([A-Za-z0-9._-]+)`)
	set := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(config, -1) {
		set[m[1]] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func mountAt(c corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// checkMounts: the ConfigMap is mounted (as a directory, so updates arrive) where
// --config reads it, and the Secret where the config reads its secrets.
func checkMounts(t *testing.T, what string, pod corev1.PodSpec, c corev1.Container, configPath, configMap, secretDir, configText string) {
	t.Helper()
	volume := func(name string) *corev1.Volume {
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == name {
				return &pod.Volumes[i]
			}
		}
		return nil
	}
	m := mountAt(c, filepath.Dir(configPath))
	if m == nil || m.SubPath != "" || filepath.Base(configPath) != "gatewatch.yaml" {
		t.Errorf("%s: --config %s is not gatewatch.yaml of a directory mount: %+v", what, configPath, c.VolumeMounts)
	} else if v := volume(m.Name); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != configMap {
		t.Errorf("%s: %s is not the ConfigMap %s", what, m.MountPath, configMap)
	}
	m = mountAt(c, strings.TrimSuffix(secretDir, "/"))
	if m == nil {
		t.Errorf("%s: nothing mounted at %s, where gatewatch.yaml reads its secrets", what, secretDir)
		return
	}
	v := volume(m.Name)
	if v == nil || v.Secret == nil || v.Secret.SecretName == "" || len(v.Secret.Items) > 0 {
		t.Errorf("%s: %s is not a whole Secret: %+v", what, secretDir, v)
	}
	if !m.ReadOnly {
		t.Errorf("%s: the Secret's mount is writable", what)
	}
}

// checkLockedDown: non-root, no privilege escalation, every capability dropped, a
// read-only root filesystem, the runtime's seccomp profile.
func checkLockedDown(t *testing.T, what string, pod corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v, want a non-root user and the RuntimeDefault seccomp profile", what, psc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: the pod mounts a service account token it has no use for", what)
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: container %s securityContext %+v, want no privilege escalation, a read-only root, every capability dropped", what, c.Name, sc)
		}
	}
}

// envBytes reads a byte size such as 1600MiB from the container's environment.
func envBytes(t *testing.T, c corev1.Container, name string) int64 {
	t.Helper()
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
	if i < 0 {
		t.Fatalf("container %s has no %s", c.Name, name)
	}
	v := c.Env[i].Value
	for suffix, mult := range map[string]int64{"GiB": 1 << 30, "MiB": 1 << 20} {
		if n, ok := strings.CutSuffix(v, suffix); ok {
			x, err := strconv.ParseInt(n, 10, 64)
			if err == nil {
				return x * mult
			}
		}
	}
	t.Fatalf("%s=%q: want a whole number of MiB or GiB", name, v)
	return 0
}

// memoryBound is the README's sizing rule: runPeakRSS and lookupCaches, and for each
// enabled detector its bytesPerKey and samplesPerKey times its max_keys.
func memoryBound(t *testing.T, detectors map[string]any) int64 {
	t.Helper()
	var keyBytes int64
	var names []string
	for name, v := range detectors {
		d, ok := v.(map[string]any)
		if !ok {
			continue
		}
		mk, ok := d["max_keys"].(float64)
		if !ok {
			continue
		}
		if on, _ := d["enabled"].(bool); on {
			per, ok := bytesPerKey[name]
			if !ok {
				t.Errorf("detector %s: no measured bytes per key; run its Memory benchmark and add it to bytesPerKey", name)
			}
			if name != "new_country" {
				per += samplesPerKey
			}
			keyBytes += int64(mk) * per
			names = append(names, fmt.Sprintf("%s %d", name, int64(mk)))
		}
	}
	if len(names) == 0 {
		t.Fatal("check-config printed no detector with max_keys")
	}
	slices.Sort(names)
	t.Logf("max_keys: %s", strings.Join(names, ", "))
	return runPeakRSS + lookupCaches + keyBytes
}
