// procbench drives SPIRE server NodeAttestor plugin processes the way SPIRE does
// (hashicorp go-plugin over gRPC) and measures what the plugin process pays.
//
// It reads a plan (JSON, written by `python -m tests.bench.procbench`), and for
// every configuration in it starts one process of every plugin variant (e.g. a
// baseline commit and the current tree), loads and configures each like SPIRE's
// catalog, then runs batches of sequential attestations, alternating the variants
// batch by batch. The plugin process's CPU is read from /proc/<pid>/stat
// (utime+stime, which includes threads that have already exited) around each
// batch. The agent side is computed here, in software, with the node's EK private
// key (TPM2_ActivateCredential for an RSA EK), so nothing else competes for the
// CPU in Python.
//
// No generated code: messages are hand-encoded with protowire and sent through a
// pass-through codec on raw gRPC streams.
package main

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// ---- plan and results ------------------------------------------------------------

type Plugin struct {
	Name string            `json:"name"`
	Argv []string          `json:"argv"`
	Dir  string            `json:"dir"`
	Env  map[string]string `json:"env"`
	HCL  string            `json:"hcl,omitempty"` // appended to each configuration's (e.g. log_level)
}

type Node struct {
	Payload []byte `json:"payload"`
	EKKey   int    `json:"ek_key"` // index into Config.EKKeys; -1: echo a fixed answer
	AKName  []byte `json:"ak_name"`
}

type Config struct {
	Name string `json:"name"`
	// Plugin argv per variant name, when this configuration runs another executable
	// (e.g. the do-nothing plugin); otherwise the variant's own argv.
	Argv   map[string][]string `json:"argv,omitempty"`
	HCL    string              `json:"hcl"`
	EKKeys [][]byte            `json:"ek_keys"` // PKCS#8 DER
	Nodes  []Node              `json:"nodes"`   // cycled; warm-up takes the first ones
	Answer []byte              `json:"answer,omitempty"`
}

type Plan struct {
	TrustDomain  string   `json:"trust_domain"`
	HostServices []string `json:"host_services"`
	Plugins      []Plugin `json:"plugins"`
	Configs      []Config `json:"configs"`
	Rounds       int      `json:"rounds"`
	Batch        int      `json:"batch"`
	Warmup       int      `json:"warmup"`
	Processes    int      `json:"processes"` // fresh processes per variant and configuration
	Starts       int      `json:"starts"`
	StartsHCL    string   `json:"starts_hcl"`
	LogDir       string   `json:"log_dir"`
	// Silent streams: per variant, honest attestations with none, then with this many
	// streams open that say nothing, then with as many that hold a challenge unanswered.
	Silent *SilentPlan `json:"silent,omitempty"`
	// Run this command (with {pid} replaced) around the measured batches of the
	// first plugin, and stop it with SIGINT afterwards (py-spy record).
	Sampler []string `json:"sampler,omitempty"`
}

type BatchResult struct {
	Plugin       string    `json:"plugin"`
	Round        int       `json:"round"`
	Instance     int       `json:"process"` // which fresh process of this variant
	Attestations int       `json:"attestations"`
	CPUSeconds   float64   `json:"cpu_seconds"`
	WallSeconds  float64   `json:"wall_seconds"`
	Latencies    []float64 `json:"latencies"`
}

type ConfigResult struct {
	Config      string             `json:"config"`
	Batches     []BatchResult      `json:"batches"`
	RSSBytes    map[string][]int64 `json:"rss_after_configure"` // one per process
	RSSEndBytes map[string][]int64 `json:"rss_after_batches"`
	Threads     map[string]int     `json:"threads_after_batches"`
}

type StartResult struct {
	Plugin           string  `json:"plugin"`
	HandshakeSeconds float64 `json:"handshake_seconds"`
	LoadedSeconds    float64 `json:"loaded_seconds"`
	ConfiguredSecs   float64 `json:"configured_seconds"`
	RSSBytes         int64   `json:"rss_after_configure"`
	StartCPUSeconds  float64 `json:"cpu_seconds_to_configured"`
}

type SilentPlan struct {
	Config       string `json:"config"` // which configuration's HCL and nodes
	Streams      int    `json:"streams"`
	Attestations int    `json:"attestations"` // honest ones measured in each phase
}

// SilentPhase is one phase of the silent-stream run of one variant.
type SilentPhase struct {
	Phase     string    `json:"phase"` // "quiet", "nothing" or "challenged"
	Opened    int       `json:"opened"`
	Refused   int       `json:"refused"` // silent streams the plugin ended before the honest run
	RSSBefore int64     `json:"rss_before"`
	RSSOpen   int64     `json:"rss_open"` // after the silent streams are open
	Threads   int       `json:"threads_open"`
	Latencies []float64 `json:"latencies"`
	Errors    []string  `json:"errors"` // honest attestations that failed
}

type SilentResult struct {
	Plugin string        `json:"plugin"`
	Phases []SilentPhase `json:"phases"`
}

type Results struct {
	ClockTicks int            `json:"clock_ticks_per_second"`
	Configs    []ConfigResult `json:"configs"`
	Starts     []StartResult  `json:"starts"`
	Silent     []SilentResult `json:"silent,omitempty"`
}

// ---- raw gRPC codec and protobuf encoding ----------------------------------------

type frame struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) ([]byte, error) {
	return v.(*frame).b, nil
}
func (rawCodec) Unmarshal(data []byte, v any) error {
	v.(*frame).b = append([]byte(nil), data...)
	return nil
}

var codec = grpc.ForceCodec(rawCodec{})

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// fields returns the length-delimited fields of a message by number (last one wins).
func fields(msg []byte) (map[protowire.Number][]byte, error) {
	out := map[protowire.Number][]byte{}
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			out[num] = v
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return out, nil
}

// ---- software TPM2_ActivateCredential (RSA EK, SHA-256 nameAlg, AES-128-CFB) ------

func kdfa(key []byte, label string, contextU []byte, bits int) []byte {
	var out []byte
	for counter := uint32(1); len(out)*8 < bits; counter++ {
		mac := hmac.New(sha256.New, key)
		binary.Write(mac, binary.BigEndian, counter)
		mac.Write([]byte(label))
		mac.Write([]byte{0})
		mac.Write(contextU)
		binary.Write(mac, binary.BigEndian, uint32(bits))
		out = mac.Sum(out)
	}
	return out[:bits/8]
}

func tpm2b(b []byte) ([]byte, []byte, error) {
	if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
		return nil, nil, errors.New("short TPM2B")
	}
	size := int(binary.BigEndian.Uint16(b))
	return b[2 : 2+size], b[2+size:], nil
}

func activateCredential(ek *rsa.PrivateKey, akName, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	sealed, _, err := tpm2b(encryptedSecret)
	if err != nil {
		return nil, err
	}
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, ek, sealed, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, fmt.Errorf("OAEP: %w", err)
	}
	idObject, _, err := tpm2b(credentialBlob)
	if err != nil {
		return nil, err
	}
	integrity, encIdentity, err := tpm2b(idObject)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, kdfa(seed, "INTEGRITY", nil, 256))
	mac.Write(encIdentity)
	mac.Write(akName)
	if subtle.ConstantTimeCompare(mac.Sum(nil), integrity) != 1 {
		return nil, errors.New("credential integrity check failed")
	}
	block, err := aes.NewCipher(kdfa(seed, "STORAGE", akName, 128))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(block, make([]byte, 16)).XORKeyStream(plain, encIdentity)
	secret, _, err := tpm2b(plain)
	return secret, err
}

// ---- the plugin process, loaded like SPIRE's catalog ------------------------------

type Process struct {
	cmd       *exec.Cmd
	conn      *grpc.ClientConn
	cancel    context.CancelFunc
	Handshake time.Duration
	Loaded    time.Duration
	started   time.Time
}

func start(p Plugin, argv []string, hostServices []string, logPath string) (*Process, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(),
		"NodeAttestor=NodeAttestor",
		"PLUGIN_MIN_PORT=10000",
		"PLUGIN_MAX_PORT=25000",
		"PLUGIN_PROTOCOL_VERSIONS=1",
	)
	for k, v := range p.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // as SPIRE does
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile // an *os.File: the child writes to it directly, no copy here
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	logFile.Close()
	proc := &Process{cmd: cmd, started: began}
	lines := make(chan string, 1)
	go func() {
		reader := bufio.NewReader(stdout)
		line, _ := reader.ReadString('\n')
		lines <- line
		io.Copy(io.Discard, reader) // SPIRE reads and discards later stdout
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(60 * time.Second):
		proc.Kill()
		return nil, errors.New("timeout while waiting for plugin to start")
	}
	proc.Handshake = time.Since(began)
	parts := strings.Split(strings.TrimSpace(line), "|")
	if len(parts) < 5 || parts[0] != "1" || parts[1] != "1" || parts[2] != "unix" || parts[4] != "grpc" {
		proc.Kill()
		return nil, fmt.Errorf("unrecognized handshake line %q (see %s)", line, logPath)
	}
	conn, err := grpc.NewClient("unix://"+parts[3], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		proc.Kill()
		return nil, err
	}
	proc.conn = conn
	ctx, cancel := context.WithCancel(context.Background())
	proc.cancel = cancel
	// go-plugin's client opens the broker and stdio streams at once; SPIRE's catalog
	// then announces its host-services endpoint (broker id 1) and calls Init.
	broker, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/plugin.GRPCBroker/StartStream", codec)
	if err != nil {
		proc.Kill()
		return nil, err
	}
	stdio, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true},
		"/plugin.GRPCStdio/StreamStdio", codec)
	if err != nil {
		proc.Kill()
		return nil, err
	}
	if err := stdio.SendMsg(&frame{}); err == nil {
		stdio.CloseSend()
	}
	connInfo := appendVarint(nil, 1, 1)
	connInfo = appendBytes(connInfo, 2, []byte("unix"))
	connInfo = appendBytes(connInfo, 3, []byte(filepath.Join(os.TempDir(), "procbench-host.sock")))
	if err := broker.SendMsg(&frame{connInfo}); err != nil {
		proc.Kill()
		return nil, fmt.Errorf("broker: %w", err)
	}
	var initReq []byte
	for _, name := range hostServices {
		initReq = appendBytes(initReq, 1, []byte(name))
	}
	var initResp frame
	callCtx, done := context.WithTimeout(ctx, 10*time.Second)
	defer done()
	if err := conn.Invoke(callCtx, "/spire.service.private.init.v1.Init/Init", &frame{initReq}, &initResp, codec); err != nil {
		proc.Kill()
		return nil, fmt.Errorf("Init: %w", err)
	}
	proc.Loaded = time.Since(began)
	return proc, nil
}

func (p *Process) Configure(trustDomain, hcl string) error {
	core := appendBytes(nil, 1, []byte(trustDomain))
	req := appendBytes(nil, 1, core)
	req = appendBytes(req, 2, []byte(hcl))
	ctx, done := context.WithTimeout(context.Background(), 30*time.Second)
	defer done()
	var resp frame
	return p.conn.Invoke(ctx, "/spire.service.common.config.v1.Config/Configure", &frame{req}, &resp, codec)
}

func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Stop unloads like SPIRE: Deinit, Shutdown, then SIGKILL after 2 s.
func (p *Process) Stop() {
	ctx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	var resp frame
	p.conn.Invoke(ctx, "/spire.service.private.init.v1.Init/Deinit", &frame{}, &resp, codec)
	p.conn.Invoke(ctx, "/plugin.GRPCController/Shutdown", &frame{}, &resp, codec)
	exited := make(chan struct{})
	go func() { p.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		p.cmd.Process.Kill()
		<-exited
	}
	p.cancel()
	p.conn.Close()
}

func (p *Process) Kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
	if p.cancel != nil {
		p.cancel()
	}
	if p.conn != nil {
		p.conn.Close()
	}
}

// ---- /proc -----------------------------------------------------------------------

const clockTicks = 100 // USER_HZ on Linux

func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
	rest := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, err1 := strconv.ParseUint(rest[11], 10, 64)
	stime, err2 := strconv.ParseUint(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return float64(utime+stime) / clockTicks, nil
}

func status(pid int, key string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line[len(key)+1:])
			v, _ := strconv.ParseInt(f[0], 10, 64)
			if len(f) > 1 && f[1] == "kB" {
				v *= 1024
			}
			return v
		}
	}
	return -1
}

// ---- one attestation ---------------------------------------------------------------

type Agent struct {
	keys   []*rsa.PrivateKey
	answer []byte
}

func (a *Agent) respond(node Node, challenge []byte) ([]byte, error) {
	if node.EKKey < 0 {
		return a.answer, nil
	}
	f, err := fields(challenge)
	if err != nil {
		return nil, err
	}
	secret, err := activateCredential(a.keys[node.EKKey], node.AKName, f[2], f[3])
	if err != nil {
		return nil, err
	}
	resp := appendVarint(nil, 1, 1)
	return appendBytes(resp, 2, secret), nil
}

func attest(conn *grpc.ClientConn, agent *Agent, node Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/spire.plugin.server.nodeattestor.v1.NodeAttestor/Attest", codec)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&frame{appendBytes(nil, 1, node.Payload)}); err != nil {
		return err
	}
	var msg frame
	if err := stream.RecvMsg(&msg); err != nil {
		return fmt.Errorf("waiting for the challenge: %w", err)
	}
	f, err := fields(msg.b)
	if err != nil || f[1] == nil {
		return fmt.Errorf("expected a challenge, got %x", msg.b)
	}
	answer, err := agent.respond(node, f[1])
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := stream.SendMsg(&frame{appendBytes(nil, 2, answer)}); err != nil {
		return err
	}
	if err := stream.RecvMsg(&msg); err != nil {
		return fmt.Errorf("waiting for the result: %w", err)
	}
	f, err = fields(msg.b)
	if err != nil || f[2] == nil {
		return fmt.Errorf("expected agent attributes, got %x", msg.b)
	}
	attributes, err := fields(f[2])
	if err != nil || !strings.HasPrefix(string(attributes[1]), "spiffe://") {
		return fmt.Errorf("bad agent attributes %x", f[2])
	}
	stream.CloseSend()
	if err := stream.RecvMsg(&msg); err != io.EOF {
		return fmt.Errorf("expected the end of the stream, got %v", err)
	}
	return nil
}

func runBatch(proc *Process, agent *Agent, nodes []Node, first, count int) (BatchResult, error) {
	pid := proc.Pid()
	before, err := cpuSeconds(pid)
	if err != nil {
		return BatchResult{}, err
	}
	began := time.Now()
	latencies := make([]float64, 0, count)
	for i := 0; i < count; i++ {
		t := time.Now()
		if err := attest(proc.conn, agent, nodes[(first+i)%len(nodes)]); err != nil {
			return BatchResult{}, fmt.Errorf("attestation %d: %w", first+i, err)
		}
		latencies = append(latencies, time.Since(t).Seconds())
	}
	wall := time.Since(began).Seconds()
	after, err := cpuSeconds(pid)
	if err != nil {
		return BatchResult{}, err
	}
	return BatchResult{Attestations: count, CPUSeconds: after - before, WallSeconds: wall, Latencies: latencies}, nil
}

// ---- the run -----------------------------------------------------------------------

func argvFor(cfg Config, p Plugin) []string {
	if argv, ok := cfg.Argv[p.Name]; ok {
		return argv
	}
	return p.Argv
}

func runConfig(plan *Plan, cfg Config) (ConfigResult, error) {
	result := ConfigResult{Config: cfg.Name, RSSBytes: map[string][]int64{}, RSSEndBytes: map[string][]int64{}, Threads: map[string]int{}}
	agent := &Agent{answer: cfg.Answer}
	for _, der := range cfg.EKKeys {
		key, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return result, err
		}
		agent.keys = append(agent.keys, key.(*rsa.PrivateKey))
	}
	processes := max(plan.Processes, 1)
	next := plan.Warmup
	for instance := 0; instance < processes; instance++ {
		// Rounds are shared out among fresh process instances, so that what differs
		// between two instances of the same code (hash seed, memory layout, which
		// core) averages out instead of showing up as a difference between variants.
		rounds := plan.Rounds/processes + btoi(instance < plan.Rounds%processes)
		var err error
		next, err = runInstance(plan, cfg, agent, instance, rounds, next, &result)
		if err != nil {
			return result, err
		}
	}
	return result, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// order gives the variants' order for step n: forwards when n is even, else backwards.
func order(n, count int) []int {
	out := make([]int, count)
	for j := range out {
		out[j] = j
		if n%2 == 1 {
			out[j] = count - 1 - j
		}
	}
	return out
}

func runInstance(plan *Plan, cfg Config, agent *Agent, instance, rounds, next int, result *ConfigResult) (int, error) {
	procs := make([]*Process, len(plan.Plugins))
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.Stop()
			}
		}
	}()
	for _, i := range order(instance, len(plan.Plugins)) {
		p := plan.Plugins[i]
		log := filepath.Join(plan.LogDir, fmt.Sprintf("%s-%s.log", cfg.Name, p.Name))
		proc, err := start(p, argvFor(cfg, p), plan.HostServices, log)
		if err != nil {
			return next, fmt.Errorf("%s: %w", p.Name, err)
		}
		procs[i] = proc
		if err := proc.Configure(plan.TrustDomain, cfg.HCL+"\n"+p.HCL); err != nil {
			return next, fmt.Errorf("%s: Configure: %w (see %s)", p.Name, err, log)
		}
		result.RSSBytes[p.Name] = append(result.RSSBytes[p.Name], status(proc.Pid(), "VmRSS"))
	}
	for i, proc := range procs {
		if _, err := runBatch(proc, agent, cfg.Nodes, 0, plan.Warmup); err != nil {
			return next, fmt.Errorf("%s warm-up: %w", plan.Plugins[i].Name, err)
		}
	}
	var sampler *exec.Cmd
	if len(plan.Sampler) > 0 && instance == 0 {
		argv := make([]string, len(plan.Sampler))
		for i, a := range plan.Sampler {
			a = strings.ReplaceAll(a, "{pid}", strconv.Itoa(procs[0].Pid()))
			argv[i] = strings.ReplaceAll(a, "{config}", cfg.Name)
		}
		sampler = exec.Command(argv[0], argv[1:]...)
		sampler.Stdout, sampler.Stderr = os.Stderr, os.Stderr
		if err := sampler.Start(); err != nil {
			return next, fmt.Errorf("sampler: %w", err)
		}
		time.Sleep(time.Second) // let it attach
	}
	for r := 0; r < rounds; r++ {
		round := len(result.Batches) / len(procs)
		// Alternate which variant goes first (ABBA...), so a drift in machine load
		// weighs on both alike.
		for _, i := range order(round, len(procs)) {
			batch, err := runBatch(procs[i], agent, cfg.Nodes, next, plan.Batch)
			if err != nil {
				return next, fmt.Errorf("%s round %d: %w", plan.Plugins[i].Name, round, err)
			}
			batch.Plugin, batch.Round, batch.Instance = plan.Plugins[i].Name, round, instance
			result.Batches = append(result.Batches, batch)
			fmt.Fprintf(os.Stderr, "  %-10s %-10s process %d round %2d: %.3f ms CPU/attestation\n",
				cfg.Name, batch.Plugin, instance, round, 1000*batch.CPUSeconds/float64(batch.Attestations))
		}
		next += plan.Batch // every variant gets the same nodes in the same order
	}
	if sampler != nil {
		sampler.Process.Signal(syscall.SIGINT)
		sampler.Wait()
	}
	for i, p := range plan.Plugins {
		result.RSSEndBytes[p.Name] = append(result.RSSEndBytes[p.Name], status(procs[i].Pid(), "VmRSS"))
		result.Threads[p.Name] = int(status(procs[i].Pid(), "Threads"))
	}
	return next, nil
}

func runStarts(plan *Plan) ([]StartResult, error) {
	var out []StartResult
	for n := -1; n < plan.Starts; n++ { // n == -1: one warm-up start each (.pyc, page cache)
		for _, p := range plan.Plugins {
			log := filepath.Join(plan.LogDir, fmt.Sprintf("starts-%s.log", p.Name))
			proc, err := start(p, p.Argv, plan.HostServices, log)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.Name, err)
			}
			if err := proc.Configure(plan.TrustDomain, plan.StartsHCL); err != nil {
				proc.Kill()
				return nil, fmt.Errorf("%s: Configure: %w", p.Name, err)
			}
			configured := time.Since(proc.started)
			cpu, _ := cpuSeconds(proc.Pid())
			rss := status(proc.Pid(), "VmRSS")
			proc.Stop()
			if n >= 0 {
				out = append(out, StartResult{
					Plugin: p.Name, HandshakeSeconds: proc.Handshake.Seconds(),
					LoadedSeconds: proc.Loaded.Seconds(), ConfiguredSecs: configured.Seconds(),
					RSSBytes: rss, StartCPUSeconds: cpu,
				})
			}
		}
	}
	return out, nil
}

// silentStreams opens n Attest streams; with payload set each sends it and reads its
// challenge, then says nothing more. ended counts those the plugin has ended.
func silentStreams(conn *grpc.ClientConn, n int, payload []byte, ended *atomic.Int64) (context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			"/spire.plugin.server.nodeattestor.v1.NodeAttestor/Attest", codec)
		if err != nil {
			cancel()
			return nil, err
		}
		wg.Add(1)
		go func() {
			var msg frame
			if payload != nil {
				if err := stream.SendMsg(&frame{appendBytes(nil, 1, payload)}); err != nil {
					errs <- err
				}
				err := stream.RecvMsg(&msg)
				wg.Done()
				if err != nil {
					ended.Add(1)
					return
				}
			} else {
				wg.Done()
			}
			if err := stream.RecvMsg(&msg); err != nil && ctx.Err() == nil {
				ended.Add(1)
			}
		}()
	}
	wg.Wait() // every stream open (and, with a payload, challenged or refused)
	select {
	case err := <-errs:
		cancel()
		return nil, err
	default:
	}
	return cancel, nil
}

func honest(proc *Process, agent *Agent, nodes []Node, first, count int) ([]float64, []string) {
	var latencies []float64
	var errs []string
	for i := 0; i < count; i++ {
		t := time.Now()
		if err := attest(proc.conn, agent, nodes[(first+i)%len(nodes)]); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		latencies = append(latencies, time.Since(t).Seconds())
	}
	return latencies, errs
}

func runSilent(plan *Plan) ([]SilentResult, error) {
	sp := plan.Silent
	var cfg *Config
	for i := range plan.Configs {
		if plan.Configs[i].Name == sp.Config {
			cfg = &plan.Configs[i]
		}
	}
	if cfg == nil {
		return nil, fmt.Errorf("silent: no configuration %q in the plan", sp.Config)
	}
	agent := &Agent{answer: cfg.Answer}
	for _, der := range cfg.EKKeys {
		key, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, err
		}
		agent.keys = append(agent.keys, key.(*rsa.PrivateKey))
	}
	var out []SilentResult
	for _, p := range plan.Plugins {
		log := filepath.Join(plan.LogDir, fmt.Sprintf("silent-%s.log", p.Name))
		proc, err := start(p, argvFor(*cfg, p), plan.HostServices, log)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Name, err)
		}
		result, err := silentRun(proc, plan, cfg, agent)
		proc.Stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w (see %s)", p.Name, err, log)
		}
		result.Plugin = p.Name
		out = append(out, result)
	}
	return out, nil
}

func silentRun(proc *Process, plan *Plan, cfg *Config, agent *Agent) (SilentResult, error) {
	sp := plan.Silent
	var result SilentResult
	if err := proc.Configure(plan.TrustDomain, cfg.HCL); err != nil {
		return result, fmt.Errorf("Configure: %w", err)
	}
	pid := proc.Pid()
	if _, err := runBatch(proc, agent, cfg.Nodes, 0, plan.Warmup); err != nil {
		return result, fmt.Errorf("warm-up: %w", err)
	}
	next := plan.Warmup
	for _, phase := range []string{"quiet", "nothing", "challenged"} {
		ph := SilentPhase{Phase: phase, RSSBefore: status(pid, "VmRSS")}
		cancel := context.CancelFunc(func() {})
		var ended atomic.Int64
		if phase != "quiet" {
			var payload []byte
			if phase == "challenged" {
				payload = cfg.Nodes[0].Payload
			}
			var err error
			cancel, err = silentStreams(proc.conn, sp.Streams, payload, &ended)
			if err != nil {
				return result, fmt.Errorf("%s: opening silent streams: %w", phase, err)
			}
			ph.Opened = sp.Streams
			time.Sleep(2 * time.Second) // let the plugin take them all in
		}
		ph.RSSOpen = status(pid, "VmRSS")
		ph.Threads = int(status(pid, "Threads"))
		ph.Refused = int(ended.Load())
		ph.Latencies, ph.Errors = honest(proc, agent, cfg.Nodes, next, sp.Attestations)
		next += sp.Attestations
		cancel()
		fmt.Fprintf(os.Stderr, "  silent %-9s %-10s %4d open, %4d refused, %d honest errors, RSS %.1f -> %.1f MiB, %d threads\n",
			phase, "", ph.Opened, ph.Refused, len(ph.Errors), float64(ph.RSSBefore)/(1<<20), float64(ph.RSSOpen)/(1<<20), ph.Threads)
		result.Phases = append(result.Phases, ph)
		time.Sleep(time.Second) // the cancelled streams end on the plugin side
	}
	return result, nil
}

func main() {
	planPath := flag.String("plan", "", "plan JSON")
	outPath := flag.String("out", "", "results JSON")
	flag.Parse()
	data, err := os.ReadFile(*planPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var plan Plan
	if err := json.Unmarshal(data, &plan); err != nil {
		fmt.Fprintln(os.Stderr, "plan:", err)
		os.Exit(2)
	}
	results := Results{ClockTicks: clockTicks}
	for _, cfg := range plan.Configs {
		fmt.Fprintf(os.Stderr, "configuration %s: %d rounds of %d attestations per plugin\n", cfg.Name, plan.Rounds, plan.Batch)
		r, err := runConfig(&plan, cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "configuration %s: %v\n", cfg.Name, err)
			os.Exit(1)
		}
		results.Configs = append(results.Configs, r)
	}
	if plan.Starts > 0 {
		fmt.Fprintf(os.Stderr, "starts: %d per plugin, interleaved\n", plan.Starts)
		starts, err := runStarts(&plan)
		if err != nil {
			fmt.Fprintln(os.Stderr, "starts:", err)
			os.Exit(1)
		}
		results.Starts = starts
	}
	if plan.Silent != nil && plan.Silent.Streams > 0 {
		fmt.Fprintf(os.Stderr, "silent streams: %d per phase, %d honest attestations each\n", plan.Silent.Streams, plan.Silent.Attestations)
		silent, err := runSilent(&plan)
		if err != nil {
			fmt.Fprintln(os.Stderr, "silent:", err)
			os.Exit(1)
		}
		results.Silent = silent
	}
	sort.SliceStable(results.Starts, func(i, j int) bool { return results.Starts[i].Plugin < results.Starts[j].Plugin })
	out, _ := json.MarshalIndent(results, "", " ")
	if err := os.WriteFile(*outPath, out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
