# fish completion for the bproc tools. Installed as
# /usr/share/fish/vendor_completions.d/bpsh.fish (and linked under the other tools' names).
# Node specifications complete to the node numbers and nN names the master knows
# (`bpstat -n`), the state words, `all` and `master`.

function __bproc_nodes
    for n in (timeout 2 bpstat -n 2>/dev/null)
        echo $n
        echo n$n
    end
    printf '%s\n' up down boot error unreachable allup notdown allnotdown all master
end

function __bproc_bpcp_nodes
    for n in (timeout 2 bpstat -n 2>/dev/null) master all
        echo $n:
    end
end

# bpsh
complete -c bpsh -s h -l help -d 'print help'
complete -c bpsh -s a -d 'every node that is up'
complete -c bpsh -s A -d 'every node that is not down'
complete -c bpsh -s n -d 'remote stdin is /dev/null'
complete -c bpsh -s N -d 'no I/O forwarding'
complete -c bpsh -s L -d 'line-buffer output'
complete -c bpsh -s p -d 'prefix lines with the node number'
complete -c bpsh -s s -d 'show nodes one after another'
complete -c bpsh -s d -d 'divider before each node'
complete -c bpsh -s b -x -d 'buffer size'
complete -c bpsh -s I -l stdin -r -d 'remote stdin from FILE'
complete -c bpsh -s O -l stdout -r -d 'remote stdout to FILE'
complete -c bpsh -s E -l stderr -r -d 'remote stderr to FILE'
complete -c bpsh -s t -l time -d 'print the elapsed time'
complete -c bpsh -l timeout -x -d 'kill what runs after SECS'
complete -c bpsh -l fail-fast -d 'kill the others when one fails'
complete -c bpsh -l fold -d 'print each distinct output once'
complete -c bpsh -l report -d 'print each node outcome'
complete -c bpsh -l json -d 'one JSON object per node'
complete -c bpsh -n '__fish_is_first_arg' -f -a '(__bproc_nodes)'

# bpstat
complete -c bpstat -f -a '(__bproc_nodes)'
complete -c bpstat -s c -l compact -d 'grouped table'
complete -c bpstat -s l -l long -d 'one line per node'
complete -c bpstat -s a -l address -d 'node addresses'
complete -c bpstat -s s -l status -d 'node states'
complete -c bpstat -s n -l number -d 'node numbers'
complete -c bpstat -s t -l total -d 'number of nodes'
complete -c bpstat -l json -d 'JSON with machine reports'
complete -c bpstat -s U -l update -d 'redisplay on changes'
complete -c bpstat -s p -d 'remote processes'
complete -c bpstat -s P -d 'annotate ps output'

# bpctl
complete -c bpctl -f
complete -c bpctl -s M -l master -d 'select the master'
complete -c bpctl -s S -l slave -x -a '(__bproc_nodes)' -d 'select nodes'
complete -c bpctl -s s -l state -x -a 'up down boot error' -d 'set the state'
complete -c bpctl -s m -l mode -x -a '0111 0110 0100 0011 0010 0001 0000' -d 'set the mode'
complete -c bpctl -s u -l user -x -a '(__fish_complete_users)' -d 'set the owner'
complete -c bpctl -s g -l group -x -a '(__fish_complete_groups)' -d 'set the group'
complete -c bpctl -s r -l chroot -r -d 'chroot the slave'
complete -c bpctl -s R -l reboot -d 'reboot'
complete -c bpctl -s H -l halt -d 'halt'
complete -c bpctl -s P -l pwroff -d 'power off'

# bpcp
complete -c bpcp -s p -d 'keep modes and times'
complete -c bpcp -s r -d 'copy directories recursively'
complete -c bpcp -l fanout -x -d 'children per node in a broadcast'
complete -c bpcp -a '(__bproc_bpcp_nodes)'

# bpcluster
complete -c bpcluster -f -n '__fish_use_subcommand' -a 'up down status demo'
complete -c bpcluster -s n -x -d 'number of nodes'
complete -c bpcluster -l dir -r -d 'cluster directory'
complete -c bpcluster -l no-isolate -d 'share host name and /tmp'
complete -c bpcluster -l quiet -d 'daemons log warnings only'
complete -c bpcluster -l diskless -d 'nodes without a filesystem'
