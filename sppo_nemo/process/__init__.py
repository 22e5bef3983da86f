"""What a process sets up for itself: how SIGTERM and SIGUSR1 stop it (``stopping``) and the glibc
malloc settings of the CPU engines (``allocator``), and worker processes that die with their
parent and stop as whole process groups (``children``)."""
