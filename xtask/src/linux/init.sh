#!/bin/sh
# /init of Thermocline's Linux initramfs (built by `cargo xtask linux-assets`;
# docs/guests.md, "Linux guests"). Busybox provides every command.
#
# Kernel command line (read from /proc/cmdline):
#   thermocline_test=smoke   run the scripted check below, then power off
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

case "$(param thermocline_test)" in
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
