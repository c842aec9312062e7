/* A server that rewrites its argv and comm to "/usr/sbin/sshd -D" as its
 * first act, then (once GO exists) sends DNS queries on sockets closed right
 * after sendto; once GO2 (GO + "2") exists, the same again (after a daemon
 * restart). For tests/test_kernel_attribution_live.py (rename evasion).
 * usage: renamer PEER4 REPS GO */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int query(unsigned char *buf, const char *name)
{
	unsigned char *p = buf + 12;
	memset(buf, 0, 12);
	buf[0] = 0x12; buf[1] = 0x34; buf[2] = 0x01; buf[5] = 1;
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t n = dot ? (size_t)(dot - name) : strlen(name);
		*p++ = (unsigned char)n;
		memcpy(p, name, n);
		p += n;
		name += n + (dot ? 1 : 0);
	}
	*p++ = 0;
	*p++ = 0; *p++ = 1; *p++ = 0; *p++ = 1;
	return (int)(p - buf);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	char *peer = strdup(argv[1]), *go = strdup(argv[3]);
	int reps = atoi(argv[2]);
	char *start = argv[0], *end = argv[argc - 1] + strlen(argv[argc - 1]);
	memset(start, 0, (size_t)(end - start));
	strcpy(start, "/usr/sbin/sshd");
	strcpy(start + 15, "-D");
	prctl(PR_SET_NAME, "sshd");
	while (access(go, F_OK) != 0)
		usleep(20000);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(53)};
	inet_pton(AF_INET, peer, &to.sin_addr);
	char go2[4096];
	snprintf(go2, sizeof(go2), "%s2", go);
	for (int round = 0; round < 2; round++) {
		/* round 2 (after GO2 exists): the same once the daemon has restarted */
		while (round == 1 && access(go2, F_OK) != 0)
			usleep(20000);
		for (int i = 0; i < reps; i++) {
			unsigned char buf[300];
			char name[64];
			snprintf(name, sizeof(name), "%s%d.test", round ? "again" : "renamed", i);
			int n = query(buf, name);
			int s = socket(AF_INET, SOCK_DGRAM, 0);
			sendto(s, buf, n, 0, (struct sockaddr *)&to, sizeof(to));
			close(s);
			usleep(20000);
		}
	}
	pause();
	return 0;
}
