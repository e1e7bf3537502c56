//! Per-CPU segmentation: a GDT with 64-bit kernel code/data segments and a TSS
//! whose interrupt stack table gives the double fault its own stack.
//!
//! Long mode ignores segment bases and limits, but the CPU still needs a code
//! segment descriptor for CS, and the TSS is where it finds the stacks it
//! switches to on an interrupt (IST). A double fault often comes from a kernel
//! stack overflow; handling it on the faulting stack would triple-fault, so
//! vector 8 uses IST slot [`DOUBLE_FAULT_IST_INDEX`].
//!
//! The boot CPU's tables are statics ([`init_boot_cpu`]); the platform layer
//! builds one [`CpuTables`] per application processor with [`CpuTables::new`]
//! and leaks it, since a loaded GDT and TSS must live forever.
//!
//! Follows: Intel SDM Vol. 3 "Segment Descriptor Tables", "Task Management in
//! 64-bit Mode" (64-bit TSS, IST).

use core::cell::UnsafeCell;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (0-based, so the TSS's IST1) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

/// Size of each double-fault stack.
pub const DOUBLE_FAULT_STACK_BYTES: usize = 5 * 4096;

/// A stack the CPU switches to; 16-byte aligned as the ABI wants.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct IstStack(pub [u8; DOUBLE_FAULT_STACK_BYTES]);

impl IstStack {
    /// A zeroed stack (for statics).
    pub const fn new() -> Self {
        Self([0; DOUBLE_FAULT_STACK_BYTES])
    }
}

impl Default for IstStack {
    fn default() -> Self {
        Self::new()
    }
}

/// Segment selectors of [`CpuTables`]'s GDT.
#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    /// 64-bit kernel code.
    pub kernel_code: SegmentSelector,
    /// Kernel data (for SS/DS/ES).
    pub kernel_data: SegmentSelector,
    /// This CPU's TSS.
    pub tss: SegmentSelector,
}

/// One CPU's GDT and TSS. Must be `'static` once loaded.
#[derive(Debug)]
pub struct CpuTables {
    tss: TaskStateSegment,
    gdt: GlobalDescriptorTable,
    selectors: Option<Selectors>,
}

impl CpuTables {
    /// Tables whose double-fault IST entry points at the top of `df_stack`.
    pub fn new(df_stack: &'static mut IstStack) -> Self {
        let mut tss = TaskStateSegment::new();
        let top = VirtAddr::from_ptr(df_stack.0.as_ptr_range().end);
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] = top;
        Self {
            tss,
            gdt: GlobalDescriptorTable::new(),
            selectors: None,
        }
    }

    /// Builds the GDT (it needs the TSS's final address, so only once `self`
    /// is `'static`), loads it, reloads the segment registers and the task
    /// register. Call once per CPU, on that CPU.
    pub fn load(&'static mut self) -> Selectors {
        // Split the borrow: the GDT's TSS descriptor refers to `self.tss`
        // forever, while `self.gdt` is written.
        let tss: &'static TaskStateSegment = &self.tss;
        let gdt = &mut self.gdt;
        let selectors = Selectors {
            kernel_code: gdt.append(Descriptor::kernel_code_segment()),
            kernel_data: gdt.append(Descriptor::kernel_data_segment()),
            tss: gdt.append(Descriptor::tss_segment(tss)),
        };
        self.selectors = Some(selectors);
        let gdt: &'static GlobalDescriptorTable = gdt;
        gdt.load();
        // SAFETY:
        // 1. The selectors index descriptors in the GDT just loaded, which is
        //    'static, so CS/SS/DS/ES stay valid.
        // 2. The TSS descriptor is available (never loaded before) and the TSS
        //    it describes is 'static, so LTR succeeds and IST stacks exist.
        unsafe {
            CS::set_reg(selectors.kernel_code);
            SS::set_reg(selectors.kernel_data);
            DS::set_reg(selectors.kernel_data);
            ES::set_reg(selectors.kernel_data);
            load_tss(selectors.tss);
        }
        selectors
    }
}

/// Storage for the boot CPU's tables, handed out once as `&'static mut`.
struct BootCell<T>(UnsafeCell<T>);

// SAFETY: the only access is the single `&mut` made inside `BOOT_TABLES`'s
// `call_once`, which runs once.
unsafe impl<T> Sync for BootCell<T> {}

static BOOT_DF_STACK: BootCell<IstStack> = BootCell(UnsafeCell::new(IstStack::new()));
static BOOT_CPU_TABLES: BootCell<Option<CpuTables>> = BootCell(UnsafeCell::new(None));
static BOOT_TABLES: Once<()> = Once::new();

/// Loads the boot CPU's GDT and TSS. Idempotent.
pub fn init_boot_cpu() {
    BOOT_TABLES.call_once(|| {
        // SAFETY: `Once` runs this closure exactly once, so these are the only
        // references ever made to the two cells (see `BootCell`).
        let tables = unsafe {
            let stack = &mut *BOOT_DF_STACK.0.get();
            let slot = &mut *BOOT_CPU_TABLES.0.get();
            slot.insert(CpuTables::new(stack))
        };
        tables.load();
    });
}
