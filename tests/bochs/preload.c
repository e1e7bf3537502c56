/*
 * Preload library that makes the `bochscpu-python==0.4.0` wheel usable as
 * Thermocline's VMX test bed on Debian 12 (glibc 2.36).
 *
 * The harness (bed.py) loads this library with RTLD_GLOBAL before it imports
 * `bochscpu`, so every PLT call that the wheel's `_bochscpu*.so` makes to the
 * symbols below resolves here first (global scope is searched before the
 * library's own definitions). What each piece fixes, measured on the pinned
 * wheel (see tests/bochs/README.md and shared TESTBEDS.md section 3):
 *
 *  1. The wheel references glibc 2.38's C23 names `__isoc23_strtoull` and
 *     `__isoc23_sscanf`; glibc 2.36 lacks them and the import fails.
 *  2. VMXON calls `bx_pc_system_c::get_enable_a20()`, a stub that asserts.
 *     The bed has no A20 gate: the line is always enabled.
 *  3. The first IN/OUT looks up the bool parameter `misc.port_e9_hack.enabled`
 *     and dereferences the NULL that the wheel's `sim_get_param_bool` returns
 *     for names it does not know. Answer those with a false parameter, and
 *     answer `cpu.ignore_bad_msrs` false too, so unknown MSRs raise #GP.
 *  4. Port I/O lands in `bx_devices_c::inp` / `outp`, stubs that assert; the
 *     wheel's Python inp/outp hooks are never called. Forward both to
 *     callbacks the harness registers with `bed_set_io_handlers`.
 *  5. Bochs' log functions are compiled to empty stubs; print error, panic and
 *     fatal messages (and info with BED_BOCHS_INFO=1) to stderr and count them.
 *  6. A triple fault asserts in `BX_MEM_C::dbg_fetch_mem` (the instruction
 *     dump before shutdown); answer "no bytes" so the CPU reaches shutdown.
 *
 * The mangled names are internals of the pinned wheel: bed.py refuses to run
 * with any other version.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- 1. glibc 2.38 symbols ------------------------------------------------ */

/*
 * Only where libc lacks them: on glibc >= 2.38 the headers redirect strtoull
 * and vsscanf to these very names, so forwarding would recurse.
 */
#if !__GLIBC_PREREQ(2, 38)
unsigned long long __isoc23_strtoull(const char *s, char **end, int base)
{
	return strtoull(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsscanf(s, fmt, ap);
	va_end(ap);
	return n;
}
#endif

/* ---- 2. A20 ----------------------------------------------------------------- */

/* bool bx_pc_system_c::get_enable_a20(void) */
_Bool _ZN14bx_pc_system_c14get_enable_a20Ev(void *self)
{
	(void)self;
	return 1;
}

/* ---- 3. missing parameters -------------------------------------------------- */

/*
 * The real functions live in the wheel's .so, which was dlopen'ed RTLD_LOCAL
 * after this library: RTLD_NEXT cannot see it. Find it from the caller's
 * address instead, and look the symbol up in that object's own scope.
 */
static void *real_symbol(const void *caller, const char *name)
{
	Dl_info info;
	if (!dladdr(caller, &info) || !info.dli_fname)
		return NULL;
	void *handle = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
	if (!handle)
		return NULL;
	void *sym = dlsym(handle, name);
	dlclose(handle); /* RTLD_NOLOAD took a reference; the object stays loaded */
	return sym;
}

typedef void *(*get_param_fn)(const char *name);
typedef void *(*new_param_bool_fn)(const char *name, uint32_t value);

#define MAX_STAND_INS 32
static struct {
	char name[96];
	void *param;
} stand_ins[MAX_STAND_INS];
static unsigned stand_in_count;
static get_param_fn real_get_param_bool;
static new_param_bool_fn real_new_param_bool;

void *sim_get_param_bool(const char *name)
{
	if (!real_get_param_bool) {
		const void *caller = __builtin_return_address(0);
		real_get_param_bool = (get_param_fn)real_symbol(caller, "sim_get_param_bool");
		real_new_param_bool = (new_param_bool_fn)real_symbol(caller, "sim_new_param_bool");
		if (!real_get_param_bool || !real_new_param_bool) {
			fprintf(stderr, "bochs-preload: cannot find the wheel's sim_get_param_bool\n");
			abort();
		}
	}
	/*
	 * The wheel sets cpu.ignore_bad_msrs, so RDMSR/WRMSR of an MSR the model
	 * lacks returns 0 instead of raising #GP as a real CPU does. That hides
	 * bugs and breaks the kernel's #GP-guarded MSR probes: answer false.
	 */
	void *param = strcmp(name, "cpu.ignore_bad_msrs") == 0 ? NULL : real_get_param_bool(name);
	if (param)
		return param;

	for (unsigned i = 0; i < stand_in_count; i++)
		if (strcmp(stand_ins[i].name, name) == 0)
			return stand_ins[i].param;
	if (stand_in_count == MAX_STAND_INS || strlen(name) >= sizeof(stand_ins[0].name)) {
		fprintf(stderr, "bochs-preload: no room for bool parameter '%s'\n", name);
		abort();
	}
	param = real_new_param_bool(name, 0);
	strcpy(stand_ins[stand_in_count].name, name);
	stand_ins[stand_in_count].param = param;
	stand_in_count++;
	if (getenv("BED_BOCHS_INFO"))
		fprintf(stderr, "bochs-preload: bool parameter '%s' answered false\n", name);
	return param;
}

/* ---- 4. port I/O ------------------------------------------------------------ */

typedef uint32_t (*in_handler)(uint32_t port, uint32_t len);
typedef void (*out_handler)(uint32_t port, uint32_t value, uint32_t len);
static in_handler on_in;
static out_handler on_out;
static uint64_t io_count;

/* Called by the harness through ctypes; NULL handlers restore the defaults. */
void bed_set_io_handlers(in_handler in, out_handler out)
{
	on_in = in;
	on_out = out;
}

uint64_t bed_io_count(void)
{
	return io_count;
}

static uint32_t width_mask(unsigned len)
{
	return len >= 4 ? 0xffffffffu : (1u << (8 * len)) - 1;
}

/* Bit32u bx_devices_c::inp(Bit16u addr, unsigned io_len) */
uint32_t _ZN12bx_devices_c3inpEtj(void *self, uint16_t port, unsigned len)
{
	(void)self;
	io_count++;
	/* Nothing decodes the port: the bus floats high, as on a real ISA bus. */
	uint32_t value = on_in ? on_in(port, len) : 0xffffffffu;
	return value & width_mask(len);
}

/* void bx_devices_c::outp(Bit16u addr, Bit32u value, unsigned io_len) */
void _ZN12bx_devices_c4outpEtjj(void *self, uint16_t port, uint32_t value, unsigned len)
{
	(void)self;
	io_count++;
	if (on_out)
		on_out(port, value & width_mask(len), len);
}

/* ---- 6. triple fault -------------------------------------------------------- */

/*
 * Before a triple fault shuts the CPU down, Bochs dumps the faulting
 * instruction through BX_MEM_C::dbg_fetch_mem, a stub that asserts. Report
 * "no bytes" instead, so the CPU reaches its shutdown state (which calls the
 * harness's hlt hook) and the harness can report the triple fault.
 */
/* static bool BX_MEM_C::dbg_fetch_mem(BX_CPU_C *cpu, bx_phy_address addr, unsigned len, Bit8u *buf) */
_Bool _ZN8BX_MEM_C13dbg_fetch_memEP8BX_CPU_CmjPh(void *cpu, uint64_t addr, unsigned len,
						 uint8_t *buf)
{
	(void)cpu;
	(void)addr;
	memset(buf, 0, len);
	return 0;
}

/* ---- 5. Bochs log messages -------------------------------------------------- */

static uint64_t error_count, panic_count;

uint64_t bed_bochs_errors(void)
{
	return error_count;
}

uint64_t bed_bochs_panics(void)
{
	return panic_count;
}

/*
 * Some messages come once per guest event (an EPT violation is "VMEXIT: EPT
 * violation for guest paddr ...", thousands per run while a hypervisor
 * faults RAM in): print each format the first times only, then count.
 */
#define REPEATS_PRINTED 8
#define FORMATS_TRACKED 64
static struct {
	const char *fmt;
	uint64_t seen;
} formats[FORMATS_TRACKED];
static uint64_t suppressed;

uint64_t bed_bochs_suppressed(void)
{
	return suppressed;
}

static int should_print(const char *fmt)
{
	for (unsigned i = 0; i < FORMATS_TRACKED; i++) {
		if (formats[i].fmt == fmt || !formats[i].fmt) {
			formats[i].fmt = fmt;
			if (++formats[i].seen <= REPEATS_PRINTED)
				return 1;
			suppressed++;
			return 0;
		}
	}
	return 1;
}

static void log_line(const char *level, const char *fmt, va_list ap)
{
	if (!should_print(fmt))
		return;
	fprintf(stderr, "[bochs %s] ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	fflush(stderr);
}

/* void logfunctions::error(const char *fmt, ...) */
void _ZN12logfunctions5errorEPKcz(void *self, const char *fmt, ...)
{
	(void)self;
	error_count++;
	va_list ap;
	va_start(ap, fmt);
	log_line("error", fmt, ap);
	va_end(ap);
}

/* void logfunctions::panic(const char *fmt, ...) */
void _ZN12logfunctions5panicEPKcz(void *self, const char *fmt, ...)
{
	(void)self;
	panic_count++;
	va_list ap;
	va_start(ap, fmt);
	log_line("panic", fmt, ap);
	va_end(ap);
}

/* void logfunctions::fatal1(const char *fmt, ...) */
void _ZN12logfunctions6fatal1EPKcz(void *self, const char *fmt, ...)
{
	(void)self;
	panic_count++;
	va_list ap;
	va_start(ap, fmt);
	log_line("fatal", fmt, ap);
	va_end(ap);
}

/* void logfunctions::info(const char *fmt, ...) */
void _ZN12logfunctions4infoEPKcz(void *self, const char *fmt, ...)
{
	static int wanted = -1;
	(void)self;
	/* Bochs logs at info level often; look at the environment once. */
	if (wanted < 0)
		wanted = getenv("BED_BOCHS_INFO") != NULL;
	if (!wanted)
		return;
	va_list ap;
	va_start(ap, fmt);
	log_line("info", fmt, ap);
	va_end(ap);
}
