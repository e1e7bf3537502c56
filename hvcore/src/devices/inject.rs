//! What the vCPU loop does about external interrupts before each VM
//! entry and on HLT, decided from plain facts so both backends share it.
//!
//! An external interrupt can be delivered only when RFLAGS.IF is 1, no
//! STI or MOV SS/POP SS interrupt shadow is in effect, and no other event
//! is already being injected on this entry (the SDM's "Interruptibility
//! State" and "Event Injection" sections of the VM-entry chapter; the APM's
//! "Interrupt Shadows" and EVENTINJ). When the PIC has a vector but the
//! guest cannot take it, the loop asks for an exit at the first moment it
//! can (VMX's interrupt-window exiting, SVM's virtual interrupt with the
//! VINTR intercept) and injects then.
//!
//! The caller acknowledges the PIC ([`super::pic::DualPic::acknowledge`])
//! only when it injects, and uses the vector the acknowledge returns
//! (which may be spurious). An injection the CPU could not complete (the
//! exit's IDT-vectoring or EXITINTINFO field is valid) is re-injected as
//! it was, without a second acknowledge: the PIC already has it in
//! service.

/// The facts the decision needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interruptibility {
    /// The vector the PIC would deliver ([`super::pic::DualPic::pending_vector`]).
    pub pending_vector: Option<u8>,
    /// Guest RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// Blocking by STI or by MOV SS/POP SS for one instruction.
    pub shadow: bool,
    /// An event (an exception, a re-injected interrupt) already occupies
    /// this entry's injection field.
    pub event_in_flight: bool,
}

/// What to do before the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Acknowledge the PIC and inject its vector on this entry.
    InjectNow,
    /// The guest cannot take it yet: request an interrupt-window exit.
    RequestWindow,
    /// No interrupt is pending: clear any window request.
    Nothing,
}

/// The decision before a VM entry.
pub fn decide(s: Interruptibility) -> Injection {
    match s.pending_vector {
        None => Injection::Nothing,
        Some(_) if s.interrupts_enabled && !s.shadow && !s.event_in_flight => Injection::InjectNow,
        Some(_) => Injection::RequestWindow,
    }
}

/// What a HLT exit leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltOutcome {
    /// An interrupt is deliverable: resume the guest after the HLT (and
    /// inject it).
    Wake,
    /// Wait for a device event or the next timer deadline, then ask again.
    Sleep,
    /// Interrupts are off: with no NMI source on this platform nothing can
    /// wake it (Linux's `poweroff -f` with `acpi=off` ends this way,
    /// "reboot: System halted"). The VM has stopped for good.
    HaltedForever,
}

/// The outcome of a HLT with `pending_vector` at the PIC and RFLAGS.IF =
/// `interrupts_enabled`. HLT itself ends an STI shadow (the instruction
/// after STI is the HLT), so the shadow does not matter here.
pub fn on_halt(pending_vector: Option<u8>, interrupts_enabled: bool) -> HaltOutcome {
    match (interrupts_enabled, pending_vector) {
        (false, _) => HaltOutcome::HaltedForever,
        (true, Some(_)) => HaltOutcome::Wake,
        (true, None) => HaltOutcome::Sleep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_four_blocking_cases() {
        let ready = Interruptibility {
            pending_vector: Some(0x30),
            interrupts_enabled: true,
            shadow: false,
            event_in_flight: false,
        };
        assert_eq!(decide(ready), Injection::InjectNow);
        assert_eq!(
            decide(Interruptibility {
                interrupts_enabled: false,
                ..ready
            }),
            Injection::RequestWindow
        );
        assert_eq!(
            decide(Interruptibility {
                shadow: true,
                ..ready
            }),
            Injection::RequestWindow
        );
        assert_eq!(
            decide(Interruptibility {
                event_in_flight: true,
                ..ready
            }),
            Injection::RequestWindow
        );
        assert_eq!(
            decide(Interruptibility {
                pending_vector: None,
                ..ready
            }),
            Injection::Nothing
        );
    }

    #[test]
    fn halt_outcomes() {
        assert_eq!(on_halt(Some(0x30), true), HaltOutcome::Wake);
        assert_eq!(on_halt(None, true), HaltOutcome::Sleep);
        assert_eq!(on_halt(Some(0x30), false), HaltOutcome::HaltedForever);
        assert_eq!(on_halt(None, false), HaltOutcome::HaltedForever);
    }

    proptest! {
        /// Injection happens exactly when something is pending and nothing
        /// blocks it; a pending interrupt is never dropped (it is either
        /// injected or waited for).
        #[test]
        fn inject_iff_deliverable(v in any::<Option<u8>>(), f in any::<bool>(), sh in any::<bool>(), ev in any::<bool>()) {
            let d = decide(Interruptibility { pending_vector: v, interrupts_enabled: f, shadow: sh, event_in_flight: ev });
            prop_assert_eq!(d == Injection::InjectNow, v.is_some() && f && !sh && !ev);
            prop_assert_eq!(d == Injection::Nothing, v.is_none());
        }
    }
}
