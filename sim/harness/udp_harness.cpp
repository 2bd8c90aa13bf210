// The virtual Ethernet board: an Ethernet device's top-level gateware, Verilated, on a UDP port.
//
// The top (class Vtop) has clk, rst and the GMII side of its MACs: gmii_rx_dv, gmii_rx_er and
// gmii_rxd (the wire to the gateware, a byte a cycle) and gmii_tx_en and gmii_txd (from it);
// their C++ names come from board_ports.h, which sim/udp_board.py writes.
//
// It plays the network between the host and the board. Each datagram that arrives on
// 127.0.0.1:PORT is sent to the gateware as the whole Ethernet frame a host on a LAN would send:
// preamble and SFD, the board's MAC address, the virtual host's, IPv4 (header checksum made)
// from the virtual host's address to the board's, UDP from the datagram's source port to the
// board's port, the datagram, padding to 60 bytes and the FCS; then at least 12 idle bytes (the
// inter-frame gap), at the line's rate of a byte a cycle. Each frame the gateware sends is
// checked (preamble, FCS) and, if it is UDP to the virtual host, its payload is sent from PORT to
// 127.0.0.1 at the frame's destination port: the host that asked. Anything else is counted.
//
// Usage: udp_harness PORT MAC IP UDP_PORT [PCAP]
//   MAC (12 hex digits), IP (8 hex digits) and UDP_PORT (decimal) are the board's. Listens on
//   127.0.0.1:PORT (0: any free port) and prints "listening PORT". Each line read on stdin
//   prints the counters as one line, "stats NAME VALUE ..."; at the end of stdin (or SIGTERM,
//   SIGINT) it prints "cycles N seconds S" and the counters, and exits 0. With PCAP, every
//   frame on the wire both ways (without preamble, with FCS) is written there (pcap, Ethernet),
//   so that a test, or Wireshark, can read what went over the wire.
//
// Clocking as the UART board's harness: flat out while frames move, slices of kIdleSlice cycles
// between waits of up to 1 ms for the socket when idle, so the gateware's clock keeps going.

#include <arpa/inet.h>
#include <csignal>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "Vtop.h"
#include "clocked_board.h"
#include "board_ports.h"
#include "verilated.h"

namespace {

constexpr int kResetCycles = 64;        // the crossings' reset synchronisers too
constexpr int kBusyPollCycles = 256;
constexpr int kQuietCycles = 4096;
constexpr int kIdleSlice = 256;
constexpr int kGap = 12;                // inter-frame gap, bytes
constexpr size_t kMaxQueued = 256;      // frames waiting for the wire; more are dropped
constexpr size_t kMaxFrame = 16384;     // a longer transmission is cut and counted bad

// The virtual host on the LAN: its MAC and IPv4 address (10.0.0.1).
const uint8_t kHostMac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x02};
constexpr uint32_t kHostIp = 0x0A000001;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

uint32_t crc_table[256];
void init_crc() {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}
uint32_t crc32(const uint8_t* data, size_t n) {  // Ethernet's FCS (zlib's crc32)
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

void put16(std::vector<uint8_t>& v, uint32_t x) { v.push_back(x >> 8); v.push_back(x); }
void put32(std::vector<uint8_t>& v, uint32_t x) { put16(v, x >> 16); put16(v, x & 0xFFFF); }
uint32_t get16(const uint8_t* p) { return p[0] << 8 | p[1]; }
uint32_t get32(const uint8_t* p) { return get16(p) << 16 | get16(p + 2); }

struct Counters {
    uint64_t datagrams_in = 0, datagrams_out = 0;     // host to board, board to host
    uint64_t rx_frames = 0, rx_wire_bytes = 0;        // to the gateware: preamble to FCS
    uint64_t tx_frames = 0, tx_wire_bytes = 0;        // from it
    uint64_t rx_payload = 0, tx_payload = 0;          // UDP payload bytes each way
    uint64_t tx_bad = 0, tx_other = 0, dropped = 0;   // bad preamble/FCS; not for the host
    void print(FILE* out) const {
        std::fprintf(out,
                     "stats datagrams_in %llu datagrams_out %llu rx_frames %llu rx_wire_bytes "
                     "%llu tx_frames %llu tx_wire_bytes %llu rx_payload %llu tx_payload %llu "
                     "tx_bad %llu tx_other %llu dropped %llu\n",
                     (unsigned long long)datagrams_in, (unsigned long long)datagrams_out,
                     (unsigned long long)rx_frames, (unsigned long long)rx_wire_bytes,
                     (unsigned long long)tx_frames, (unsigned long long)tx_wire_bytes,
                     (unsigned long long)rx_payload, (unsigned long long)tx_payload,
                     (unsigned long long)tx_bad, (unsigned long long)tx_other,
                     (unsigned long long)dropped);
        std::fflush(out);
    }
};

struct Pcap {
    FILE* file = nullptr;
    explicit Pcap(const char* path) {
        if (!path) return;
        file = std::fopen(path, "wb");
        if (!file) { std::perror(path); std::exit(2); }
        const uint32_t header[6] = {0xA1B2C3D4u, 0x00040002u, 0, 0, 65535, 1};  // LE host
        std::fwrite(header, sizeof header, 1, file);
    }
    void write(const uint8_t* frame, size_t n) {
        if (!file) return;
        auto now = std::chrono::system_clock::now().time_since_epoch();
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
        const uint32_t record[4] = {static_cast<uint32_t>(us / 1000000),
                                    static_cast<uint32_t>(us % 1000000),
                                    static_cast<uint32_t>(n), static_cast<uint32_t>(n)};
        std::fwrite(record, sizeof record, 1, file);
        std::fwrite(frame, 1, n, file);
        std::fflush(file);
    }
    ~Pcap() { if (file) std::fclose(file); }
};

// The Ethernet frame (destination MAC to FCS) carrying `payload` from the virtual host's
// `src_port` to the board.
std::vector<uint8_t> udp_frame(const uint8_t* mac, uint32_t ip, uint32_t port, uint32_t src_port,
                               const uint8_t* payload, size_t n) {
    std::vector<uint8_t> f(mac, mac + 6);
    f.insert(f.end(), kHostMac, kHostMac + 6);
    put16(f, 0x0800);
    size_t ip_at = f.size();
    put16(f, 0x4500);                          // version 4, IHL 5, DSCP 0
    put16(f, static_cast<uint32_t>(20 + 8 + n));
    put16(f, 0);                               // identification
    put16(f, 0x4000);                          // don't fragment
    put16(f, 64 << 8 | 17);                    // TTL 64, UDP
    put16(f, 0);                               // checksum, below
    put32(f, kHostIp);
    put32(f, ip);
    uint32_t sum = 0;
    for (size_t i = ip_at; i < ip_at + 20; i += 2) sum += get16(&f[i]);
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    f[ip_at + 10] = static_cast<uint8_t>(~sum >> 8);
    f[ip_at + 11] = static_cast<uint8_t>(~sum);
    put16(f, src_port);
    put16(f, port);
    put16(f, static_cast<uint32_t>(8 + n));
    put16(f, 0);                               // no UDP checksum (IPv4 allows it)
    f.insert(f.end(), payload, payload + n);
    while (f.size() < 60) f.push_back(0);
    uint32_t fcs = crc32(f.data(), f.size());
    for (int k = 0; k < 4; k++) f.push_back(static_cast<uint8_t>(fcs >> (8 * k)));
    return f;
}

int bind_udp(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { std::perror("socket"); std::exit(2); }
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        std::fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, std::strerror(errno));
        std::exit(2);
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("listening %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    return fd;
}

bool parse_hex(const char* text, size_t digits, uint64_t& out) {
    if (std::strlen(text) != digits) return false;
    char* end = nullptr;
    out = std::strtoull(text, &end, 16);
    return end && *end == 0;
}

}  // namespace

int main(int argc, char** argv) {
    uint64_t mac_value = 0, ip_value = 0;
    if (argc < 5 || argc > 6 || !parse_hex(argv[2], 12, mac_value) ||
        !parse_hex(argv[3], 8, ip_value) || std::atoi(argv[4]) <= 0) {
        std::fprintf(stderr, "usage: %s PORT MAC(12 hex) IP(8 hex) UDP_PORT [PCAP]\n", argv[0]);
        return 2;
    }
    uint8_t mac[6];
    for (int k = 0; k < 6; k++) mac[k] = static_cast<uint8_t>(mac_value >> (8 * (5 - k)));
    const uint32_t ip = static_cast<uint32_t>(ip_value);
    const uint32_t board_port = static_cast<uint32_t>(std::atoi(argv[4]));
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    init_crc();

    Pcap pcap(argc == 6 ? argv[5] : nullptr);
    ClockedBoard board(kResetCycles, [](Vtop* top) {
        top->RX_DV = 0;
        top->RX_ER = 0;
        top->RXD = 0;
    });
    int sock = bind_udp(std::atoi(argv[1]));
    Counters count;

    std::deque<std::vector<uint8_t>> queued;   // frames (preamble to FCS) for the wire
    std::vector<uint8_t> wire;                  // the one on the wire now
    size_t wire_at = 0;
    int gap = 0;                                // idle bytes still owed after a frame
    std::vector<uint8_t> sent;                  // what the gateware is sending now
    bool sending = false;
    std::vector<uint8_t> datagram(65536);
    uint64_t quiet = 0;
    auto start = std::chrono::steady_clock::now();

    // A frame the gateware finished sending: checked, and its datagram passed on.
    auto finish = [&](const std::vector<uint8_t>& f) {
        count.tx_frames++;
        count.tx_wire_bytes += f.size();
        size_t pre = 0;
        while (pre < f.size() && f[pre] == 0x55) pre++;
        if (pre != 7 || pre >= f.size() || f[pre] != 0xD5 || f.size() - pre - 1 < 64) {
            count.tx_bad++;
            return;
        }
        const uint8_t* e = f.data() + pre + 1;
        size_t n = f.size() - pre - 1;
        pcap.write(e, n);
        uint32_t fcs = crc32(e, n - 4);
        uint32_t got = e[n - 4] | e[n - 3] << 8 | e[n - 2] << 16 | static_cast<uint32_t>(e[n - 1]) << 24;
        if (fcs != got) {
            count.tx_bad++;
            return;
        }
        bool to_host = std::memcmp(e, kHostMac, 6) == 0 && get16(e + 12) == 0x0800 &&
                       e[14] == 0x45 && e[23] == 17 && get32(e + 30) == kHostIp &&
                       get32(e + 26) == ip && get16(e + 34) == board_port;
        size_t total = to_host ? get16(e + 16) : 0;
        if (!to_host || total < 28 || 14 + total > n - 4 || get16(e + 38) != total - 20) {
            count.tx_other++;
            return;
        }
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        to.sin_port = htons(static_cast<uint16_t>(get16(e + 36)));
        sendto(sock, e + 42, total - 28, 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
        count.datagrams_out++;
        count.tx_payload += total - 28;
    };

    std::vector<pollfd> fds(2);
    while (!g_stop) {
        bool busy = !queued.empty() || wire_at < wire.size() || sending;
        bool idle = quiet >= kQuietCycles && !busy;
        fds[0] = {STDIN_FILENO, POLLIN, 0};
        fds[1] = {sock, POLLIN, 0};
        int ready = poll(fds.data(), fds.size(), idle ? 1 : 0);
        if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP))) {
            char buf[256];
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n <= 0) break;
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] == '\n') count.print(stdout);
        }
        if (ready > 0 && (fds[1].revents & POLLIN)) {
            for (;;) {  // every datagram waiting
                sockaddr_in from{};
                socklen_t len = sizeof from;
                ssize_t n = recvfrom(sock, datagram.data(), datagram.size(), MSG_DONTWAIT,
                                     reinterpret_cast<sockaddr*>(&from), &len);
                if (n < 0) break;
                count.datagrams_in++;
                if (n > 1472 || queued.size() >= kMaxQueued) {  // past the MTU; a full queue
                    count.dropped++;
                    continue;
                }
                std::vector<uint8_t> f(7, 0x55);
                f.push_back(0xD5);
                auto body = udp_frame(mac, ip, board_port, ntohs(from.sin_port),
                                      datagram.data(), static_cast<size_t>(n));
                f.insert(f.end(), body.begin(), body.end());
                count.rx_payload += static_cast<uint64_t>(n);
                queued.push_back(std::move(f));
                quiet = 0;
            }
        }

        int cycles = idle ? kIdleSlice : kBusyPollCycles;
        Vtop* top = board.top.get();
        for (int i = 0; i < cycles; i++) {
            // The wire to the gateware: the current frame's next byte, else the gap, else the
            // next frame.
            if (wire_at >= wire.size() && gap == 0 && !queued.empty()) {
                wire = std::move(queued.front());
                queued.pop_front();
                wire_at = 0;
                pcap.write(wire.data() + 8, wire.size() - 8);
                count.rx_frames++;
                count.rx_wire_bytes += wire.size();
            }
            if (wire_at < wire.size()) {
                top->RX_DV = 1;
                top->RXD = wire[wire_at++];
                if (wire_at == wire.size()) gap = kGap;
            } else {
                top->RX_DV = 0;
                top->RXD = 0;
                if (gap > 0) gap--;
            }
            board.tick();
            // From the gateware: tx_en and txd after the edge.
            if (top->TX_EN) {
                if (!sending) { sent.clear(); sending = true; }
                if (sent.size() < kMaxFrame) sent.push_back(static_cast<uint8_t>(top->TXD));
                quiet = 0;
            } else if (sending) {
                sending = false;
                finish(sent);
            } else if (wire_at >= wire.size() && gap == 0 && queued.empty()) {
                quiet++;
            }
        }
    }

    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("cycles %llu seconds %.6f\n", static_cast<unsigned long long>(board.cycles),
                seconds);
    count.print(stdout);
    close(sock);
    board.top->final();
    return 0;
}
