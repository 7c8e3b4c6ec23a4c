/*
 * floor.c — the do-nothing FastCGI responder: the floor of the nginx -> FastCGI hop.
 *
 * libfcgi (Debian libfcgi-dev), the classic FCGI_Accept() loop: read the request body
 * (FCGI stdin) to the end, write one fixed text reply, verify nothing, parse nothing.
 * Any real FastCGI application costs at least this much per request.
 *
 * Usage: floor /path/to.sock      (creates the Unix socket, backlog 1024)
 *        floor                    (fd 0 is the listening socket, as spawn-fcgi does)
 * Build: gcc -O2 -o floor floor.c -lfcgi
 */
#include <fcgi_stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static const char REPLY[] =
    "<xml><ToUserName><![CDATA[oBenchUser]]></ToUserName>"
    "<FromUserName><![CDATA[gh_bench]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[You said: hello bench]]></Content></xml>";

static void on_term(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    if (argc > 1) {
        int fd = FCGX_OpenSocket(argv[1], 1024);
        if (fd < 0) {
            perror("FCGX_OpenSocket");
            return 1;
        }
        if (fd != 0) {
            dup2(fd, 0);
            close(fd);
        }
    }
    while (FCGI_Accept() >= 0) {
        char buf[4096];
        while (fread(buf, 1, sizeof buf, stdin) > 0) {
        }
        printf("Content-Type: text/xml; charset=utf-8\r\nContent-Length: %u\r\n\r\n%s",
               (unsigned)(sizeof REPLY - 1), REPLY);
    }
    return 0;
}
