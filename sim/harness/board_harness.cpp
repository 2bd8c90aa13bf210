// The virtual board: a board's top-level gateware, Verilated, serving its link on TCP.
//
// The top (class Vtop) has clk, rst and two byte streams, i_bytes (host to gateware) and
// o_bytes (gateware to host); their C++ names come from board_ports.h, which sim/virtual_board.py
// writes. Bytes from the TCP client go into i_bytes one per cycle as the gateware takes them;
// bytes out of o_bytes go back to the client. The gateware keeps running between clients, as a
// board does when its USB cable is replugged.
//
// Usage: board_harness PORT
//   Listens on 127.0.0.1:PORT (0: any free port), prints "listening PORT" on stdout, and serves
//   until stdin closes or it gets SIGTERM/SIGINT, then prints
//   "cycles N seconds S" on stdout and exits 0.
//
// Clocking: while bytes move, the model runs flat out, polling the socket every few hundred
// cycles. When the link has been quiet for a while it runs in slices of kIdleSlice cycles
// between waits of up to 1 ms for the socket, so that an idle virtual board costs little CPU yet
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
#include "fast_eval.h"
#include "verilated.h"

namespace {

constexpr int kResetCycles = 4;
constexpr int kBusyPollCycles = 256;   // cycles between socket polls while busy
constexpr int kQuietCycles = 4096;     // cycles without traffic before idling
constexpr int kIdleSlice = 256;        // cycles run per idle wake-up
constexpr size_t kRecvChunk = 1 << 16;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Board {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vtop> top;
    uint64_t cycles = 0;

    Board() : ctx(new VerilatedContext), top(new Vtop{ctx.get()}) {
        top->clk = 0;
        top->rst = 1;
        top->I_VALID = 0;
        top->O_READY = 0;
        top->eval();
        for (int i = 0; i < kResetCycles; i++) tick();
        top->rst = 0;
        top->eval();
    }

    void tick() {
        top->clk = 1;
        fast_eval(top.get());
        top->clk = 0;
        fast_eval(top.get());
        cycles++;
    }
};

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
    listen(fd, 1);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("listening %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);

    Board board;
    int server = listen_on(std::atoi(argv[1]));
    int client = -1;

    std::vector<uint8_t> rx(kRecvChunk);    // from the client, not yet taken by the gateware
    size_t rx_head = 0, rx_tail = 0;
    std::vector<uint8_t> tx;                // from the gateware, not yet sent
    tx.reserve(kRecvChunk);
    uint64_t quiet = 0;
    auto start = std::chrono::steady_clock::now();

    while (!g_stop) {
        // Socket work: accept, receive, send, and notice stdin closing.
        bool idle = quiet >= kQuietCycles && rx_head == rx_tail && tx.empty();
        pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {client >= 0 ? client : server, POLLIN, 0}};
        if (client >= 0 && !tx.empty()) fds[1].events |= POLLOUT;
        int ready = poll(fds, 2, idle ? 1 : 0);
        if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP))) {
            char buf[256];
            if (read(STDIN_FILENO, buf, sizeof buf) <= 0) break;
        }
        if (ready > 0 && client < 0 && (fds[1].revents & POLLIN)) {
            client = accept(server, nullptr, nullptr);
            if (client >= 0) {
                int one = 1;
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
        } else if (ready > 0 && client >= 0) {
            if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) && rx_head == rx_tail) {
                ssize_t n = recv(client, rx.data(), rx.size(), 0);
                if (n <= 0) {
                    close(client);
                    client = -1;
                    tx.clear();
                } else {
                    rx_head = 0;
                    rx_tail = static_cast<size_t>(n);
                    quiet = 0;
                }
            }
            if (client >= 0 && (fds[1].revents & POLLOUT) && !tx.empty()) {
                ssize_t n = send(client, tx.data(), tx.size(), MSG_DONTWAIT);
                if (n > 0) tx.erase(tx.begin(), tx.begin() + n);
            }
        }

        // Clock the gateware.
        int cycles = idle ? kIdleSlice : kBusyPollCycles;
        Vtop* top = board.top.get();
        // Two evaluations a cycle, not three: the ports read here were settled by the previous
        // cycle's second evaluation. That holds because the link bridge's i_bytes.ready and
        // o_bytes.valid/payload come from its registers, not from this cycle's i_bytes.valid,
        // payload or o_bytes.ready (a top where they did would need a settling eval() here).
        // Dropping the third evaluation made the virtual board about a quarter faster.
        for (int i = 0; i < cycles; i++) {
            bool have = rx_head != rx_tail;
            top->I_VALID = have;
            if (have) top->I_PAYLOAD = rx[rx_head];
            top->O_READY = 1;
            bool took = have && top->I_READY;
            bool gave = top->O_VALID;
            uint8_t out = static_cast<uint8_t>(top->O_PAYLOAD);
            board.tick();
            if (took) rx_head++;
            if (gave) tx.push_back(out);
            quiet = (took || gave) ? 0 : quiet + 1;
            if (gave && tx.size() >= kRecvChunk) break;  // let the socket drain
        }
        if (client < 0) tx.clear();  // nobody to hear it, as on an unplugged UART
    }

    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("cycles %llu seconds %.6f\n", static_cast<unsigned long long>(board.cycles),
                seconds);
    if (client >= 0) close(client);
    close(server);
    board.top->final();
    return 0;
}
