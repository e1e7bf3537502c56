//! Spin locks for the kernel, plain and interrupt-safe.
//!
//! [`IrqSpinLock`] disables interrupts on this CPU while it is held and
//! restores the previous state on release. Use it for any data that an
//! interrupt handler (the timer tick, an IPI) also takes, and for anything a
//! thread holds briefly while the scheduler may run: with interrupts off the
//! holder cannot be preempted, so another thread on the same CPU never spins
//! on a lock whose holder is switched out. The plain [`spin::Mutex`] stays
//! fine for data only threads touch and where holding it across preemption is
//! harmless (the spinner is itself preemptible).
//!
//! Lock order (outer first): a CPU's run queue, then the heap, then the frame
//! allocator. Nothing allocates while holding the frame allocator lock.

use core::ops::{Deref, DerefMut};
use x86_64::instructions::interrupts;

/// A spin lock that keeps interrupts disabled on this CPU while held.
#[derive(Debug)]
pub struct IrqSpinLock<T> {
    inner: spin::Mutex<T>,
}

/// Holds an [`IrqSpinLock`]; re-enables interrupts on drop if they were on.
#[derive(Debug)]
pub struct IrqSpinGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    irqs_were_enabled: bool,
}

impl<T> IrqSpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Disables interrupts, then spins until the lock is free.
    pub fn lock(&self) -> IrqSpinGuard<'_, T> {
        let irqs_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqSpinGuard {
            guard: Some(self.inner.lock()),
            irqs_were_enabled,
        }
    }

    /// Takes the lock if it is free, without spinning.
    pub fn try_lock(&self) -> Option<IrqSpinGuard<'_, T>> {
        let irqs_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        match self.inner.try_lock() {
            Some(guard) => Some(IrqSpinGuard {
                guard: Some(guard),
                irqs_were_enabled,
            }),
            None => {
                if irqs_were_enabled {
                    interrupts::enable();
                }
                None
            }
        }
    }
}

impl<T> Deref for IrqSpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Only `drop` takes the inner guard out.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<T> DerefMut for IrqSpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T> Drop for IrqSpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release the lock before interrupts can arrive again.
        drop(self.guard.take());
        if self.irqs_were_enabled {
            interrupts::enable();
        }
    }
}
