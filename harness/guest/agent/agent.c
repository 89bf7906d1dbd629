/*
 * jitdiff's guest agent: the only program a guest runs (as its /init's exec).
 *
 * It is deliberately a thin bpf() executor: the host (harness/guest/protocol.py)
 * builds every program, its BTF, func_info and line_info, and the order of
 * operations, exactly as harness/kernel/loader.py does for the host kernel;
 * the agent only turns indices into file descriptors, calls bpf() and sends
 * back what the kernel said. Static, no library but libc, built by the
 * arch's cross compiler at `jitdiff guest setup`.
 *
 * Transport: the virtio-serial port named "jitdiff". Every message is a
 * little-endian u32 length followed by that many bytes. At start the agent
 * sends a hello (kernel release, machine, bpf_jit_enable, the vmlinux BTF),
 * then answers one request per system until the port closes. Integers are
 * little-endian u32 on the wire (every arch the guests run is little-endian).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#define MAGIC 0x4741444a /* "JDAG" */
#define VERSION 2

enum { OP_MAP_CREATE = 1, OP_MAP_UPDATE, OP_MAP_DELETE, OP_PROG_LOAD, OP_TEST_RUN, OP_PROG_INFO };
enum { BPF_MAP_CREATE = 0, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM,
       BPF_PROG_LOAD = 5, BPF_PROG_TEST_RUN = 10, BPF_OBJ_GET_INFO_BY_FD = 15, BPF_BTF_LOAD = 18 };
#define MAP_TYPE_ARRAY 2
#define MAX_OBJS 256
#define LOG_SIZE (16u << 20)
#define INFO_SIZE 232
#define ATTR_SIZE 160

static int port = -1;

static void die(const char *what) {
	fprintf(stderr, "jitdiff-agent: %s: %s\n", what, strerror(errno));
	_exit(1);
}

/* --- byte buffers ---------------------------------------------------------- */

struct buf { uint8_t *p; size_t len, cap; };

static void put(struct buf *b, const void *src, size_t n) {
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 256;
		b->p = realloc(b->p, b->cap);
		if (!b->p) die("realloc");
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
}
static void put32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void putblob(struct buf *b, const void *src, size_t n) { put32(b, n); put(b, src, n); }

struct rd { const uint8_t *p, *end; int bad; };

static uint32_t get32(struct rd *r) {
	uint32_t v = 0;
	if (r->end - r->p < 4) { r->bad = 1; return 0; }
	memcpy(&v, r->p, 4);
	r->p += 4;
	return v;
}
static const uint8_t *getblob(struct rd *r, uint32_t *n) {
	*n = get32(r);
	if ((size_t)(r->end - r->p) < *n) { r->bad = 1; *n = 0; return NULL; }
	const uint8_t *s = r->p;
	r->p += *n;
	return s;
}

/* --- the port ---------------------------------------------------------------- */

static void xfer(int wr, void *p, size_t n) {
	uint8_t *c = p;
	while (n) {
		ssize_t k = wr ? write(port, c, n) : read(port, c, n);
		if (k < 0 && errno == EINTR) continue;
		if (k == 0 && !wr) _exit(0); /* the host went away */
		if (k <= 0) die(wr ? "write" : "read");
		c += k;
		n -= k;
	}
}

static void send_msg(struct buf *b) {
	uint32_t n = b->len;
	xfer(1, &n, 4);
	xfer(1, b->p, b->len);
}

static uint8_t *recv_msg(uint32_t *n) {
	xfer(0, n, 4);
	uint8_t *p = malloc(*n ? *n : 1);
	if (!p) die("malloc");
	xfer(0, p, *n);
	return p;
}

static int open_port(void) {
	for (int tries = 0; tries < 600; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[300], name[64] = {0};
			if (e->d_name[0] == '.') continue;
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(path, O_RDONLY);
			if (fd < 0) continue;
			ssize_t k = read(fd, name, sizeof name - 1);
			close(fd);
			if (k > 0 && strncmp(name, "jitdiff", 7) == 0 && (name[7] == '\n' || !name[7])) {
				snprintf(path, sizeof path, "/dev/%s", e->d_name);
				closedir(d);
				int p = open(path, O_RDWR);
				if (p < 0) die(path);
				return p;
			}
		}
		if (d) closedir(d);
		usleep(50000);
	}
	errno = ENOENT;
	die("no virtio port named jitdiff");
	return -1;
}

static void read_file(const char *path, struct buf *out) {
	int fd = open(path, O_RDONLY);
	if (fd < 0) return;
	uint8_t tmp[65536];
	ssize_t k;
	while ((k = read(fd, tmp, sizeof tmp)) > 0) put(out, tmp, k);
	close(fd);
}

/* --- bpf() ---------------------------------------------------------------------- */

static uint64_t ptr(const void *p) { return (uint64_t)(uintptr_t)p; }

static int sys_bpf(int cmd, void *attr, unsigned size) {
	long r = syscall(__NR_bpf, cmd, attr, size);
	return r < 0 ? -errno : (int)r;
}

#define SET32(a, off, v) do { uint32_t _v = (v); memcpy((uint8_t *)(a) + (off), &_v, 4); } while (0)
#define SET64(a, off, v) do { uint64_t _v = (v); memcpy((uint8_t *)(a) + (off), &_v, 8); } while (0)
static uint32_t GET32(const void *a, int off) { uint32_t v; memcpy(&v, (const uint8_t *)a + off, 4); return v; }

struct map { int fd; uint32_t type, value_size, max_entries; };
static struct map maps[MAX_OBJS];
static int progs[MAX_OBJS];
static int nmaps, nprogs, nbtf;
static int btfs[MAX_OBJS];
static char *logbuf;

static int map_create(struct rd *r) {
	uint8_t a[ATTR_SIZE] = {0};
	uint32_t type = get32(r), key = get32(r), value = get32(r), max = get32(r), n;
	const uint8_t *name = getblob(r, &n);
	if (r->bad || nmaps >= MAX_OBJS) return -EINVAL;
	SET32(a, 0, type); SET32(a, 4, key); SET32(a, 8, value); SET32(a, 12, max);
	memcpy(a + 28, name, n < 15 ? n : 15);
	int fd = sys_bpf(BPF_MAP_CREATE, a, ATTR_SIZE);
	if (fd < 0) return fd;
	maps[nmaps++] = (struct map){fd, type, value, max};
	return 0;
}

static int map_update(struct rd *r) {
	uint8_t a[ATTR_SIZE] = {0};
	uint32_t m = get32(r), key = get32(r), is_prog = get32(r), n;
	const uint8_t *value = getblob(r, &n);
	uint8_t v[4096] = {0};
	if (r->bad || m >= (uint32_t)nmaps || n > sizeof v) return -EINVAL;
	if (is_prog) {
		uint32_t idx;
		memcpy(&idx, value, 4);
		if (n != 4 || idx >= (uint32_t)nprogs) return -EINVAL;
		SET32(v, 0, progs[idx]);
	} else {
		memcpy(v, value, n);
	}
	SET32(a, 0, maps[m].fd); SET64(a, 8, ptr(&key)); SET64(a, 16, ptr(v));
	return sys_bpf(BPF_MAP_UPDATE_ELEM, a, ATTR_SIZE) < 0 ? -errno : 0;
}

static int map_delete(struct rd *r) {
	uint8_t a[ATTR_SIZE] = {0};
	uint32_t m = get32(r), key = get32(r);
	if (r->bad || m >= (uint32_t)nmaps) return -EINVAL;
	SET32(a, 0, maps[m].fd); SET64(a, 8, ptr(&key));
	return sys_bpf(BPF_MAP_DELETE_ELEM, a, ATTR_SIZE) < 0 ? -errno : 0;
}

/* Load with no log first (the verifier is the dearest part of a request
 * under TCG); a rejection is loaded again with a log to say why. */
static int load_with_log(int cmd, uint8_t *a, int log_off, struct buf *out) {
	int fd = sys_bpf(cmd, a, ATTR_SIZE);
	if (fd >= 0) { putblob(out, "", 0); return fd; }
	int err = fd;
	logbuf[0] = 0;
	if (cmd == BPF_PROG_LOAD) {
		SET32(a, log_off, 1); SET32(a, log_off + 4, LOG_SIZE); SET64(a, log_off + 8, ptr(logbuf));
	} else { /* BTF: log_buf @8, size @20, level @24 */
		SET64(a, 8, ptr(logbuf)); SET32(a, 20, LOG_SIZE); SET32(a, 24, 1);
	}
	int again = sys_bpf(cmd, a, ATTR_SIZE);
	if (again >= 0) close(again); /* loads with a log: report the first errno */
	logbuf[LOG_SIZE - 1] = 0;
	putblob(out, logbuf, strlen(logbuf));
	return err;
}

static int prog_load(struct rd *r, struct buf *out) {
	uint8_t a[ATTR_SIZE] = {0};
	uint32_t type = get32(r), nn, ni, nb, nfi, nli;
	const uint8_t *name = getblob(r, &nn), *insns_in = getblob(r, &ni), *btf = getblob(r, &nb);
	const uint8_t *fi = getblob(r, &nfi), *li = getblob(r, &nli);
	if (r->bad || nprogs >= MAX_OBJS || ni % 8) { put32(out, 0); putblob(out, "", 0); return -EINVAL; }
	uint8_t *insns = malloc(ni ? ni : 1);
	memcpy(insns, insns_in, ni);
	/* map references are indices into the request's maps: make them fds */
	for (uint32_t pc = 0; pc + 16 <= ni; pc += 8) {
		uint8_t *ins = insns + pc;
		int src = ins[1] >> 4;
		if (ins[0] == 0x18 && (src == 1 || src == 2)) {
			uint32_t idx = GET32(ins, 4);
			if (idx >= (uint32_t)nmaps) { free(insns); put32(out, 0); putblob(out, "", 0); return -EBADF; }
			SET32(ins, 4, maps[idx].fd);
		}
		if (ins[0] == 0x18) pc += 8;
	}
	int btf_fd = -1;
	if (nb) {
		uint8_t b[ATTR_SIZE] = {0};
		SET64(b, 0, ptr(btf)); SET32(b, 16, nb);
		put32(out, 1);
		btf_fd = load_with_log(BPF_BTF_LOAD, b, 0, out);
		if (btf_fd < 0) { free(insns); return btf_fd; }
		out->len -= 8; /* drop the stage and empty log: the program's follow */
		btfs[nbtf++] = btf_fd;
	}
	static const char license[] = "GPL";
	SET32(a, 0, type); SET32(a, 4, ni / 8); SET64(a, 8, ptr(insns)); SET64(a, 16, ptr(license));
	memcpy(a + 48, name, nn < 15 ? nn : 15);
	if (btf_fd >= 0) {
		SET32(a, 72, btf_fd);
		SET32(a, 76, 8); SET64(a, 80, ptr(fi)); SET32(a, 88, nfi / 8);
		SET32(a, 92, 16); SET64(a, 96, ptr(li)); SET32(a, 104, nli / 16);
	}
	put32(out, 0);
	int fd = load_with_log(BPF_PROG_LOAD, a, 24, out);
	free(insns);
	if (fd < 0) return fd;
	progs[nprogs++] = fd;
	/* the JIT may give up on a program the verifier passed (a 32-bit JIT
	 * without 64-bit atomics): the kernel then runs it in the interpreter,
	 * which must not pass for the JIT. Report the image size (0: none). */
	uint8_t info[INFO_SIZE] = {0}, i[ATTR_SIZE] = {0};
	SET32(i, 0, fd); SET32(i, 4, INFO_SIZE); SET64(i, 8, ptr(info));
	put32(out, sys_bpf(BPF_OBJ_GET_INFO_BY_FD, i, 16) < 0 ? 0 : GET32(info, 16));
	return 0;
}

static int test_run(struct rd *r, struct buf *out) {
	uint8_t a[ATTR_SIZE] = {0};
	uint32_t p = get32(r), skb = get32(r), n;
	const uint8_t *in = getblob(r, &n);
	int err = 0;
	if (r->bad || p >= (uint32_t)nprogs) err = -EINVAL;
	if (!err) {
		SET32(a, 0, progs[p]);
		/* a pointer with a zero size is EINVAL: only set it with data */
		if (skb) { SET32(a, 8, n); SET64(a, 16, n ? ptr(in) : 0); SET32(a, 32, 1); }
		else { SET32(a, 40, n); SET64(a, 48, n ? ptr(in) : 0); }
		if (sys_bpf(BPF_PROG_TEST_RUN, a, 80) < 0) err = -errno;
	}
	put32(out, err ? 0 : GET32(a, 4));
	uint32_t narrays = 0;
	for (int i = 0; i < nmaps; i++) narrays += maps[i].type == MAP_TYPE_ARRAY;
	put32(out, err ? 0 : narrays);
	for (int i = 0; i < nmaps && !err; i++) {
		if (maps[i].type != MAP_TYPE_ARRAY) continue;
		size_t vs = maps[i].value_size, total = vs * maps[i].max_entries;
		uint8_t *vals = calloc(1, total ? total : 1);
		for (uint32_t key = 0; key < maps[i].max_entries; key++) {
			uint8_t l[ATTR_SIZE] = {0};
			SET32(l, 0, maps[i].fd); SET64(l, 8, ptr(&key)); SET64(l, 16, ptr(vals + key * vs));
			sys_bpf(BPF_MAP_LOOKUP_ELEM, l, ATTR_SIZE);
		}
		putblob(out, vals, total);
		free(vals);
	}
	return err;
}

static int prog_info(struct rd *r, struct buf *out) {
	uint32_t p = get32(r);
	uint8_t first[INFO_SIZE] = {0}, second[INFO_SIZE] = {0}, a[ATTR_SIZE] = {0};
	if (r->bad || p >= (uint32_t)nprogs) return -EINVAL;
	SET32(a, 0, progs[p]); SET32(a, 4, INFO_SIZE); SET64(a, 8, ptr(first));
	if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, a, 16) < 0) return -errno;
	uint32_t jlen = GET32(first, 16), xlen = GET32(first, 20), nmap = GET32(first, 52);
	uint32_t nks = GET32(first, 104), nlens = GET32(first, 108);
	uint32_t fi_rec = GET32(first, 132), nfi = GET32(first, 144), nli = GET32(first, 148);
	uint32_t njli = GET32(first, 168), li_rec = GET32(first, 172), jli_rec = GET32(first, 176);
	uint8_t *jited = calloc(1, jlen + 1), *xl = calloc(1, xlen + 1), *mp = calloc(4, nmap + 1);
	uint8_t *ks = calloc(8, nks + 1), *ln = calloc(4, nlens + 1), *fi = calloc(fi_rec ? fi_rec : 8, nfi + 1);
	uint8_t *li = calloc(li_rec ? li_rec : 16, nli + 1), *jli = calloc(jli_rec ? jli_rec : 8, njli + 1);
	SET32(second, 16, jlen); SET32(second, 20, xlen); SET64(second, 24, ptr(jited)); SET64(second, 32, ptr(xl));
	SET32(second, 52, nmap); SET64(second, 56, ptr(mp));
	SET32(second, 104, nks); SET32(second, 108, nlens); SET64(second, 112, ptr(ks)); SET64(second, 120, ptr(ln));
	SET32(second, 132, fi_rec); SET64(second, 136, ptr(fi)); SET32(second, 144, nfi); SET32(second, 148, nli);
	SET64(second, 152, ptr(li)); SET64(second, 160, ptr(jli)); SET32(second, 168, njli);
	SET32(second, 172, li_rec); SET32(second, 176, jli_rec);
	SET64(a, 8, ptr(second));
	int err = sys_bpf(BPF_OBJ_GET_INFO_BY_FD, a, 16) < 0 ? -errno : 0;
	if (!err) {
		putblob(out, second, INFO_SIZE);
		putblob(out, jited, jlen);
		putblob(out, xl, xlen);
		putblob(out, mp, 4 * nmap);
		putblob(out, ks, 8 * nks);
		putblob(out, ln, 4 * nlens);
		putblob(out, fi, fi_rec * nfi);
		putblob(out, li, li_rec * nli);
		putblob(out, jli, jli_rec * njli);
	}
	free(jited); free(xl); free(mp); free(ks); free(ln); free(fi); free(li); free(jli);
	return err;
}

/* One request: a list of operations. A failed map creation or program load
 * ends the request (what follows depends on it); the others are reported
 * and the request goes on. Every object is closed before the reply. */
static void serve(const uint8_t *msg, uint32_t len) {
	struct rd r = {msg, msg + len, 0};
	struct buf out = {0}, res = {0};
	uint32_t nops = get32(&r), done = 0;
	nmaps = nprogs = nbtf = 0;
	for (uint32_t i = 0; i < nops && !r.bad; i++) {
		uint32_t op = get32(&r);
		int err = 0, stop = 0;
		res.len = 0;
		switch (op) {
		case OP_MAP_CREATE: err = map_create(&r); stop = err < 0; break;
		case OP_MAP_UPDATE: err = map_update(&r); break;
		case OP_MAP_DELETE: err = map_delete(&r); break;
		case OP_PROG_LOAD: err = prog_load(&r, &res); stop = err < 0; break;
		case OP_TEST_RUN: err = test_run(&r, &res); break;
		case OP_PROG_INFO: err = prog_info(&r, &res); break;
		default: err = -EINVAL; stop = 1;
		}
		put32(&out, op);
		put32(&out, -err);
		put(&out, res.p, res.len);
		done++;
		if (stop) break;
	}
	for (int i = 0; i < nprogs; i++) close(progs[i]);
	for (int i = 0; i < nmaps; i++) close(maps[i].fd);
	for (int i = 0; i < nbtf; i++) close(btfs[i]);
	struct buf reply = {0};
	put32(&reply, done);
	put(&reply, out.p, out.len);
	send_msg(&reply);
	free(out.p); free(res.p); free(reply.p);
}

int main(void) {
	logbuf = malloc(LOG_SIZE);
	if (!logbuf) die("malloc");
	port = open_port();
	struct utsname u;
	uname(&u);
	struct buf hello = {0}, jit = {0}, btf = {0};
	read_file("/proc/sys/net/core/bpf_jit_enable", &jit);
	read_file("/sys/kernel/btf/vmlinux", &btf);
	put32(&hello, MAGIC);
	put32(&hello, VERSION);
	putblob(&hello, u.release, strlen(u.release));
	putblob(&hello, u.machine, strlen(u.machine));
	putblob(&hello, jit.p, jit.len);
	putblob(&hello, btf.p, btf.len);
	send_msg(&hello);
	fprintf(stderr, "jitdiff-agent: ready (%s %s)\n", u.release, u.machine);
	for (;;) {
		uint32_t n;
		uint8_t *msg = recv_msg(&n);
		serve(msg, n);
		free(msg);
	}
}
