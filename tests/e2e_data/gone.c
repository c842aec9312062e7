/* A server that runs from a deleted executable: it reads its own image,
 * unlinks the file it was started from, then (once GO exists) sends REPS DNS
 * queries gone<i>.test and runs a child exec'd from a memfd copy of itself
 * (fexecve: its /proc/PID/exe is "/memfd:... (deleted)") that sends
 * memfd<i>.test; once GO2 (GO + "2") exists, the same as again<i>.test and
 * memfdagain<i>.test (after a daemon restart). Sockets are closed right after
 * sendto. For tests/test_hostile_daemon_live.py.
 * usage: gone PEER4 REPS GO [PREFIX]   (PREFIX: the memfd child) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int query(unsigned char *buf, const char *name)
{
	unsigned char *p = buf + 12;
	memset(buf, 0, 12);
	buf[0] = 0x43; buf[1] = 0x21; buf[2] = 0x01; buf[5] = 1;
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

static void send_all(const char *peer, int reps, const char *prefix)
{
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(53)};
	inet_pton(AF_INET, peer, &to.sin_addr);
	for (int i = 0; i < reps; i++) {
		unsigned char buf[300];
		char name[80];
		snprintf(name, sizeof(name), "%s%d.test", prefix, i);
		int n = query(buf, name);
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		sendto(s, buf, n, 0, (struct sockaddr *)&to, sizeof(to));
		close(s);
		usleep(20000);
	}
}

static void memfd_child(char *image, size_t size, char **argv, const char *prefix)
{
	pid_t pid = fork();
	if (pid == 0) {
		int fd = memfd_create("gone", MFD_CLOEXEC);
		if (fd < 0 || write(fd, image, size) != (ssize_t)size)
			_exit(3);
		char *args[] = {argv[0], argv[1], argv[2], argv[3], (char *)prefix, NULL};
		fexecve(fd, args, environ);
		_exit(4);
	}
	waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	int reps = atoi(argv[2]);
	if (argc > 4) {
		send_all(argv[1], reps, argv[4]);
		return 0;
	}
	char self[4096];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len <= 0)
		return 3;
	self[len] = 0;
	int fd = open(self, O_RDONLY);
	size_t size = (size_t)lseek(fd, 0, SEEK_END);
	char *image = malloc(size);
	if (pread(fd, image, size, 0) != (ssize_t)size)
		return 3;
	close(fd);
	if (unlink(self) != 0)
		return 5;
	char go2[4096];
	snprintf(go2, sizeof(go2), "%s2", argv[3]);
	while (access(argv[3], F_OK) != 0)
		usleep(20000);
	send_all(argv[1], reps, "gone");
	memfd_child(image, size, argv, "memfd");
	while (access(go2, F_OK) != 0)
		usleep(20000);
	send_all(argv[1], reps, "again");
	memfd_child(image, size, argv, "memfdagain");
	pause();
	return 0;
}
