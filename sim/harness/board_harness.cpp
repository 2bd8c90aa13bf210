// The virtual board: a board's top-level gateware, Verilated, serving its link on TCP.
//
// The top (class Vtop) has clk, rst and two byte streams, i_bytes (host to gateware) and
// o_bytes (gateware to host); their C++ names come from board_ports.h, which sim/virtual_board.py
// writes. Bytes from the TCP client go into i_bytes one per cycle as the gateware takes them;
// bytes out of o_bytes go back to the client. The gateware keeps running between clients, as a
// board does when its USB cable is replugged.
//
// Usage: board_harness PORT [BUSY_HEX]
//   Listens on 127.0.0.1:PORT (0: any free port), prints "listening PORT" on stdout, and serves
//   until stdin closes or it gets SIGTERM/SIGINT, then prints
//   "cycles N seconds S" on stdout and exits 0.
//
// One client at a time, as a UART has one host. The harness keeps listening while a client is
// connected: a further connection is sent the bytes BUSY_HEX (hex; the Python side builds them,
// so this file knows nothing of the link protocol), its write side is shut at once so the host
// sees the end right after them, and it is closed when the host closes or after
// kRefusedLinger. The current client is not disturbed. A client that has shut its sending side
// (or reset) has left: a UART has no half-open line.
//
// Flow control: tx, the bytes the gateware gave that the client has not taken yet, is bounded by
// kTxLimit. At the limit o_bytes.ready is held low, so the gateware stalls and stops taking input,
// the harness stops receiving, and TCP pushes back on a client that sends but never reads, as
// a full UART FIFO would. When a client leaves, what it sent and the gateware has not taken yet
// is dropped (it must not prefix the next client's first frame) and tx's memory is released.
//
// Clocking: while bytes move, the model runs flat out, polling the socket every few hundred
// cycles. When the link has been quiet for a while (or stalled by a client that does not read)
// it runs in slices of kIdleSlice cycles between waits of up to 1 ms for the socket, so that an idle virtual board costs little CPU yet
// its clock keeps going (the link's inactivity timeout counts cycles, and must still fire).

#include <arpa/inet.h>
#include <csignal>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "Vtop.h"
#include "board_ports.h"
#include "clocked_board.h"
#include "verilated.h"

namespace {

constexpr int kResetCycles = 4;
constexpr int kBusyPollCycles = 256;   // cycles between socket polls while busy
constexpr int kQuietCycles = 4096;     // cycles without traffic before idling
constexpr int kIdleSlice = 256;        // cycles run per idle wake-up
constexpr size_t kRecvChunk = 1 << 16;
constexpr size_t kTxLimit = 1 << 16;   // bytes for the client above which o_bytes stalls
constexpr size_t kMaxRefused = 8;      // refused connections kept until their host closes
constexpr auto kRefusedLinger = std::chrono::seconds(2);

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); std::exit(2); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        std::fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, std::strerror(errno));
        std::exit(2);
    }
    listen(fd, 8);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("listening %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    return fd;
}

// The bytes of a hex string, or false if it is not one.
bool parse_hex(const char* text, std::vector<uint8_t>& out) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    size_t n = std::strlen(text);
    if (n % 2) return false;
    for (size_t i = 0; i < n; i += 2) {
        int hi = nibble(text[i]), lo = nibble(text[i + 1]);
        if (hi < 0 || lo < 0) return false;
        out.push_back(static_cast<uint8_t>(hi << 4 | lo));
    }
    return true;
}

// Whether the host at the other end of fd has stopped sending: closed, shut down or reset.
bool has_left(int fd) {
    pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

// A connection refused because another host holds the board: kept open (reading and
// discarding) until its host closes it or kRefusedLinger passes, so that a request it sent
// before reading the busy reply does not make the close a reset that could lose the reply.
struct Refused {
    int fd;
    std::chrono::steady_clock::time_point until;
};

void refuse(int fd, const std::vector<uint8_t>& busy_reply, std::vector<Refused>& refused) {
    if (!busy_reply.empty()) send(fd, busy_reply.data(), busy_reply.size(), MSG_DONTWAIT);
    shutdown(fd, SHUT_WR);
    if (refused.size() >= kMaxRefused) {
        close(refused.front().fd);
        refused.erase(refused.begin());
    }
    refused.push_back({fd, std::chrono::steady_clock::now() + kRefusedLinger});
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<uint8_t> busy_reply;  // sent to a host that connects while another holds the board
    if (argc < 2 || argc > 3 || (argc == 3 && !parse_hex(argv[2], busy_reply))) {
        std::fprintf(stderr, "usage: %s PORT [BUSY_HEX]\n", argv[0]);
        return 2;
    }
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);

    ClockedBoard board(kResetCycles, [](Vtop* top) {
        top->I_VALID = 0;
        top->O_READY = 0;
    });
    int server = listen_on(std::atoi(argv[1]));
    int client = -1;
    std::vector<Refused> refused;

    std::vector<uint8_t> rx(kRecvChunk);    // from the client, not yet taken by the gateware
    size_t rx_head = 0, rx_tail = 0;
    std::vector<uint8_t> tx;                // from the gateware, not yet sent
    uint64_t quiet = 0;
    auto start = std::chrono::steady_clock::now();

    auto drop_client = [&] {
        close(client);
        client = -1;
        rx_head = rx_tail = 0;               // its unfinished bytes are not the next host's
        std::vector<uint8_t>().swap(tx);     // and its unread answers go, memory and all
    };

    std::vector<pollfd> fds;
    while (!g_stop) {
        // Socket work: receive, send, notice the client leaving, accept or refuse, and notice
        // stdin closing. The client's end is handled before a new connection, so that a host
        // that closes and at once reconnects (after a cut) is served, not refused.
        bool stalled = tx.size() >= kTxLimit;  // the client is not reading; no hurry
        bool idle = quiet >= kQuietCycles && ((rx_head == rx_tail && tx.empty()) || stalled);
        fds.clear();
        fds.push_back({STDIN_FILENO, POLLIN, 0});
        fds.push_back({server, POLLIN, 0});
        if (client >= 0) {
            short events = POLLRDHUP;
            if (rx_head == rx_tail) events |= POLLIN;
            if (!tx.empty()) events |= POLLOUT;
            fds.push_back({client, events, 0});
        }
        size_t refused_at = fds.size();
        for (const Refused& r : refused) fds.push_back({r.fd, POLLIN, 0});
        int ready = poll(fds.data(), fds.size(), idle ? 1 : 0);
        if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP))) {
            char buf[256];
            if (read(STDIN_FILENO, buf, sizeof buf) <= 0) break;
        }
        if (ready > 0 && client >= 0) {
            short revents = fds[2].revents;
            if (revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                drop_client();
            } else {
                if ((revents & POLLIN) && rx_head == rx_tail) {
                    ssize_t n = recv(client, rx.data(), rx.size(), MSG_DONTWAIT);
                    if (n > 0) {
                        rx_head = 0;
                        rx_tail = static_cast<size_t>(n);
                        quiet = 0;
                    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK &&
                                          errno != EINTR)) {
                        drop_client();
                    }
                }
                if (client >= 0 && (revents & POLLOUT) && !tx.empty()) {
                    ssize_t n = send(client, tx.data(), tx.size(), MSG_DONTWAIT);
                    if (n > 0) tx.erase(tx.begin(), tx.begin() + n);
                }
            }
        }
        if (!refused.empty()) {
            auto now = std::chrono::steady_clock::now();
            std::vector<Refused> kept;
            for (size_t k = 0; k < refused.size(); k++) {
                bool done = now >= refused[k].until;
                if (!done && ready > 0 && fds[refused_at + k].revents) {
                    char buf[4096];
                    ssize_t n = recv(refused[k].fd, buf, sizeof buf, MSG_DONTWAIT);
                    done = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
                }
                if (done) close(refused[k].fd);
                else kept.push_back(refused[k]);
            }
            refused.swap(kept);
        }
        if (ready > 0 && (fds[1].revents & POLLIN)) {
            int fd = accept(server, nullptr, nullptr);
            // Looked at again after the accept: a host that closed and reconnected closed
            // before its new connection could be accepted.
            if (fd >= 0 && client >= 0 && has_left(client)) drop_client();
            if (fd >= 0 && client >= 0) {
                refuse(fd, busy_reply, refused);
            } else if (fd >= 0) {
                client = fd;
                int one = 1;
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
        }

        // Clock the gateware.
        int cycles = idle ? kIdleSlice : kBusyPollCycles;
        Vtop* top = board.top.get();
        // Two evaluations a cycle, not three: the ports read here were settled by the previous
        // cycle's second evaluation. That holds because the link bridge's i_bytes.ready and
        // o_bytes.valid/payload come from its registers, not from this cycle's i_bytes.valid,
        // payload or o_bytes.ready (a top where they did would need a settling eval() here).
        // Dropping the third evaluation made the virtual board about a quarter faster. The
        // o_bytes.ready set here only matters at the coming edge, so a byte is given exactly
        // when o_bytes.valid (settled) and that ready are both high.
        for (int i = 0; i < cycles; i++) {
            bool have = rx_head != rx_tail;
            bool room = tx.size() < kTxLimit;
            top->I_VALID = have;
            if (have) top->I_PAYLOAD = rx[rx_head];
            top->O_READY = room;
            bool took = have && top->I_READY;
            bool gave = room && top->O_VALID;
            uint8_t out = static_cast<uint8_t>(top->O_PAYLOAD);
            board.tick();
            if (took) rx_head++;
            if (gave) tx.push_back(out);
            quiet = (took || gave) ? 0 : quiet + 1;
            if (gave && tx.size() >= kTxLimit) break;  // let the socket drain
        }
        if (client < 0) tx.clear();  // nobody to hear it, as on an unplugged UART
    }
    for (const Refused& r : refused) close(r.fd);

    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("cycles %llu seconds %.6f\n", static_cast<unsigned long long>(board.cycles),
                seconds);
    if (client >= 0) close(client);
    close(server);
    board.top->final();
    return 0;
}
