#!/bin/sh
# /init of Thermocline's Linux initramfs (built by `cargo xtask linux-assets`;
# docs/guests.md, "Linux guests"). Busybox provides every command.
#
# Kernel command line (read from /proc/cmdline):
#   thermocline_test=smoke   run the scripted check below, then power off
#   thermocline_test=thermocline
#                            the check of the test_linux scenario under
#                            Thermocline: the smoke check's facts, two uptime
#                            marks 20 s apart that the hypervisor timestamps
#                            (mark port 0xF5), then the workload's status
#                            through the exit device (port 0xF4)
#   thermocline_test=workload
#                            only the workload, its status through the exit
#                            device
#   thermocline_workload=A,B,...
#                            arguments of the workload in the smoke test
#                            (commas become spaces; default:
#                            --size-mib,64,--passes,20)
#   (neither)                an interactive shell on the console
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "thermocline-init: reached /init"

# The value of NAME=VALUE on the kernel command line.
param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
        "$1"=*) echo "${word#*=}" ;;
        esac
    done
}

# Writes byte $2 (0-255) to I/O port $1 (Thermocline's exit device:
# 0xf4 = end the VM with that status, 0xf5 = a mark line with the
# hypervisor's clock). Debian's kernel has no /dev/port: the workload
# program does the OUT.
outb() {
    /bin/workload outb "$1" "$2"
}

case "$(param thermocline_test)" in
thermocline)
    echo "thermocline-init: uname -r: $(uname -r)"
    grep -E '^(MemTotal|MemFree):' /proc/meminfo | sed 's/^/thermocline-init: /'
    sed 's/^/thermocline-init: interrupts: /' /proc/interrupts
    args=$(param thermocline_workload | tr ',' ' ')
    [ -n "$args" ] || args="--size-mib 64 --passes 4"
    echo "thermocline-init: workload $args"
    /bin/workload $args
    status=$?
    echo "thermocline-init: workload exit status $status"
    echo "thermocline-init: uptime mark 1 $(cut -d' ' -f1 /proc/uptime)"
    outb 0xf5 1
    sleep 20
    echo "thermocline-init: uptime mark 2 $(cut -d' ' -f1 /proc/uptime)"
    outb 0xf5 2
    echo "thermocline-init: exit status $status"
    outb 0xf4 "$status"
    poweroff -f
    ;;
workload)
    args=$(param thermocline_workload | tr ',' ' ')
    [ -n "$args" ] || args="--size-mib 64 --passes 20"
    echo "thermocline-init: workload $args"
    /bin/workload $args
    status=$?
    echo "thermocline-init: exit status $status"
    outb 0xf4 "$status"
    poweroff -f
    ;;
smoke)
    echo "thermocline-init: uname -r: $(uname -r)"
    grep -E '^(MemTotal|MemFree):' /proc/meminfo | sed 's/^/thermocline-init: /'
    args=$(param thermocline_workload | tr ',' ' ')
    [ -n "$args" ] || args="--size-mib 64 --passes 20"
    echo "thermocline-init: workload $args"
    /bin/workload $args
    echo "thermocline-init: workload exit status $?"
    sed 's/^/thermocline-init: interrupts: /' /proc/interrupts
    echo "thermocline-init: uptime $(cut -d' ' -f1 /proc/uptime) s"
    echo "thermocline-init: done"
    poweroff -f
    ;;
*)
    echo "thermocline-init: interactive shell (exit it to power off)"
    setsid cttyhack sh
    poweroff -f
    ;;
esac
