/*
 * wsgauge's pod sandbox ("pause") program: holds a pod's namespaces open and does nothing else.
 *
 * It waits for SIGTERM or SIGINT and then exits 0. As PID 1 of a pod with a shared PID namespace
 * it also reaps every child that gets re-parented to it (SIGCHLD), so no zombies pile up.
 * Built static (gcc -static) so the image can be FROM scratch: see images/pause/Dockerfile.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int signo) {
    (void)signo;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static void quit(int signo) {
    (void)signo;
    _exit(0);
}

static int handle(int signo, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("wsgauge-pause " WSGAUGE_PAUSE_VERSION);
        return 0;
    }
    if (getpid() != 1) {
        fputs("wsgauge-pause: warning: not running as PID 1\n", stderr);
    }
    if (handle(SIGINT, quit, 0) < 0 || handle(SIGTERM, quit, 0) < 0 ||
        handle(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("wsgauge-pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
