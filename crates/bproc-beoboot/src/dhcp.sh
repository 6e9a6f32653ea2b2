#!/bin/sh
# udhcpc's script on a beoboot node: configures the interface from the lease and keeps what
# /init needs (address, server, host name) in /run/beoboot-dhcp.
case "$1" in
deconfig)
    ifconfig "$interface" 0.0.0.0 up
    ;;
bound | renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
        ip route replace default via "${router%% *}" dev "$interface"
    fi
    {
        echo "ip='$ip'"
        echo "serverid='$serverid'"
        echo "hostname='$hostname'"
    } >/run/beoboot-dhcp
    ;;
esac
exit 0
