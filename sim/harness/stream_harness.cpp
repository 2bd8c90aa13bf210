// Streams messages through a Verilated byte-stream component at full speed.
//
// The top (class Vtop) has clk, rst, and the flattened ports of two amaranth.lib.stream
// interfaces, i_stream__{valid,ready,payload} and o_stream__{valid,ready,payload}. Neither
// their C++ names (Verilator escapes "__" as "___05F") nor where each payload field sits is
// written here: sim/harness.py derives both from the Amaranth signature and layout and writes
// them into stream_layout.h (I_VALID, ..., IN_DATA_OFFSET, ...), which this file includes.
//
// Usage: harness INPUT OUTPUT MAX_IDLE_CYCLES
//
// INPUT  (little-endian): u32 count, then per message: u32 length, bytes.
// OUTPUT (little-endian): u32 count, then per response: u8 error, u32 length, u64 end cycle,
//        bytes; then u64 cycles, u64 active cycles, u64 input stalls, f64 seconds (wall
//        time of the simulation loop), f64 CPU seconds of the loop.
//
// Every cycle the input is valid while messages remain (back to back, no idle beats) and the
// output is always ready, so the cycle counts measure the component alone. The run ends when
// one response has come for every message, or fails (exit 3) when nothing has moved on either
// stream for MAX_IDLE_CYCLES cycles.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <type_traits>
#include <vector>

#include "Vtop.h"
#include "fast_eval.h"
#include "stream_layout.h"
#include "verilated.h"


static_assert(IN_DATA_BITS <= 64 && OUT_DATA_BITS <= 64, "beats of more than 8 bytes");
static_assert(IN_PAYLOAD_BITS <= 128 && OUT_PAYLOAD_BITS <= 128, "payloads over 128 bits");

namespace {

constexpr int kResetCycles = 4;
constexpr int kWords = 4;  // 32-bit words in the widest payload handled (128 bits)

// A payload as 32-bit words, least significant first: the form of Verilator's VlWide, and a
// common form for the scalar port types (CData ... QData) that narrower payloads get.
struct Words {
    uint32_t w[kWords];
};

inline void put_field(Words& p, unsigned offset, unsigned bits, uint64_t value) {
    for (unsigned done = 0; done < bits;) {
        unsigned bit = offset + done, shift = bit % 32, n = 32 - shift;
        if (n > bits - done) n = bits - done;
        uint32_t mask = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
        p.w[bit / 32] |= (static_cast<uint32_t>(value >> done) & mask) << shift;
        done += n;
    }
}

inline uint64_t get_field(const Words& p, unsigned offset, unsigned bits) {
    uint64_t value = 0;
    for (unsigned done = 0; done < bits;) {
        unsigned bit = offset + done, shift = bit % 32, n = 32 - shift;
        if (n > bits - done) n = bits - done;
        uint32_t mask = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
        value |= static_cast<uint64_t>((p.w[bit / 32] >> shift) & mask) << done;
        done += n;
    }
    return value;
}

template <typename T>
inline void store(T& port, const Words& p) {
    if constexpr (std::is_integral_v<T>) {
        port = static_cast<T>(static_cast<uint64_t>(p.w[0]) | static_cast<uint64_t>(p.w[1]) << 32);
    } else {  // VlWide<N>
        for (std::size_t i = 0; i < T::Words; ++i) port[i] = p.w[i];
    }
}

template <typename T>
inline Words load(const T& port) {
    Words p{};
    if constexpr (std::is_integral_v<T>) {
        uint64_t v = static_cast<uint64_t>(port);
        p.w[0] = static_cast<uint32_t>(v);
        p.w[1] = static_cast<uint32_t>(v >> 32);
    } else {
        for (std::size_t i = 0; i < T::Words; ++i) p.w[i] = port[i];
    }
    return p;
}

bool read_exact(std::FILE* f, void* buffer, std::size_t size) {
    return std::fread(buffer, 1, size, f) == size;
}

template <typename T>
void write_value(std::vector<uint8_t>& out, T value) {
    uint8_t bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));  // x86 and ARM hosts are little-endian
    out.insert(out.end(), bytes, bytes + sizeof(T));
}

struct Response {
    bool error = false;
    uint64_t end_cycle = 0;
    std::vector<uint8_t> bytes;
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT MAX_IDLE_CYCLES\n", argv[0]);
        return 2;
    }
    const uint64_t max_idle = std::strtoull(argv[3], nullptr, 10);

    std::FILE* in = std::fopen(argv[1], "rb");
    if (!in) {
        std::perror(argv[1]);
        return 2;
    }
    uint32_t count = 0;
    std::vector<uint8_t> data;
    std::vector<std::size_t> starts, lengths;
    bool ok = read_exact(in, &count, 4);
    for (uint32_t i = 0; ok && i < count; ++i) {
        uint32_t length = 0;
        ok = read_exact(in, &length, 4);
        starts.push_back(data.size());
        lengths.push_back(length);
        data.resize(data.size() + length);
        ok = ok && read_exact(in, data.data() + starts.back(), length);
    }
    std::fclose(in);
    if (!ok) {
        std::fprintf(stderr, "%s: truncated input file\n", argv[1]);
        return 2;
    }

    auto context = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vtop>(context.get());

    // Reset (synchronous in Amaranth), with both streams idle.
    top->I_VALID = 0;
    top->O_READY = 0;
    top->rst = 1;
    for (int i = 0; i < kResetCycles; ++i) {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
    }
    top->rst = 0;
    top->O_READY = 1;

    std::vector<Response> responses;
    responses.reserve(count);
    Response current;
    uint32_t message = 0;        // index of the message being sent
    std::size_t position = 0;    // its next byte
    bool beat_ready = false;     // whether the payload below is that of (message, position)
    Words beat{};
    uint64_t cycle = 0, first_accept = 0, stalls = 0, last_progress = 0;
    bool accepted_any = false;

    // eval() has run (in the reset above), so the model's one-time initialisation is done.
    Vtop* const model = top.get();
    auto eval = [model] { fast_eval(model); };

    // CPU time as well as wall time: on a shared machine the wall time includes the time the
    // process waited for a core, and the CPU time gives the speed the model itself runs at.
    const auto started = std::chrono::steady_clock::now();
    timespec cpu_started{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_started);
    while (responses.size() < count) {
        const bool valid = message < count;
        if (valid && !beat_ready) {
            // Build the beat once; it stays on the port, unchanged, until it is accepted.
            const std::size_t remaining = lengths[message] - position;
            const bool last = remaining <= IN_WIDTH;
            const std::size_t n = last ? remaining : IN_WIDTH;
            uint64_t bytes = 0;
            std::memcpy(&bytes, data.data() + starts[message] + position, n);
            beat = Words{};
            put_field(beat, IN_DATA_OFFSET, IN_DATA_BITS, bytes);
            put_field(beat, IN_NBYTES_OFFSET, IN_NBYTES_BITS, last ? n : IN_WIDTH);
            put_field(beat, IN_LAST_OFFSET, 1, last);
            store(top->I_PAYLOAD, beat);
            beat_ready = true;
        }
        top->I_VALID = valid;

        // Low half of the cycle: settle what the new inputs drive (ready may depend on valid).
        top->clk = 0;
        eval();
        const bool in_fire = valid && top->I_READY;
        if (valid && !in_fire) ++stalls;
        if (top->O_VALID) {  // always ready, so every valid beat is taken
            const Words out = load(top->O_PAYLOAD);
            const bool last = get_field(out, OUT_LAST_OFFSET, 1);
            uint64_t n = last ? get_field(out, OUT_NBYTES_OFFSET, OUT_NBYTES_BITS) : OUT_WIDTH;
            if (n > OUT_WIDTH) n = OUT_WIDTH;
            const uint64_t bytes = get_field(out, OUT_DATA_OFFSET, OUT_DATA_BITS);
            for (uint64_t i = 0; i < n; ++i) current.bytes.push_back(bytes >> (8 * i));
            current.error |= get_field(out, OUT_ERROR_OFFSET, 1) != 0;
            if (last) {
                current.end_cycle = cycle;
                responses.push_back(std::move(current));
                current = Response{};
            }
            last_progress = cycle;
        }

        // Rising edge.
        top->clk = 1;
        eval();

        if (in_fire) {
            if (!accepted_any) {
                accepted_any = true;
                first_accept = cycle;
            }
            position += IN_WIDTH;
            if (position >= lengths[message]) {
                ++message;
                position = 0;
            }
            beat_ready = false;
            last_progress = cycle;
        }
        ++cycle;
        if (cycle - last_progress > max_idle) {
            std::fprintf(stderr,
                         "no progress for %llu cycles: %u of %u messages sent, %zu responses\n",
                         static_cast<unsigned long long>(max_idle), message, count,
                         responses.size());
            return 3;
        }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    timespec cpu_stopped{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_stopped);
    const double cpu_seconds =
        static_cast<double>(cpu_stopped.tv_sec - cpu_started.tv_sec) +
        1e-9 * static_cast<double>(cpu_stopped.tv_nsec - cpu_started.tv_nsec);
    top->final();

    std::vector<uint8_t> out;
    write_value<uint32_t>(out, static_cast<uint32_t>(responses.size()));
    for (const Response& r : responses) {
        write_value<uint8_t>(out, r.error);
        write_value<uint32_t>(out, static_cast<uint32_t>(r.bytes.size()));
        write_value<uint64_t>(out, r.end_cycle >= first_accept ? r.end_cycle - first_accept : 0);
        out.insert(out.end(), r.bytes.begin(), r.bytes.end());
    }
    write_value<uint64_t>(out, cycle);
    write_value<uint64_t>(out, count ? cycle - first_accept : 0);
    write_value<uint64_t>(out, stalls);
    write_value<double>(out, seconds);
    write_value<double>(out, cpu_seconds);

    std::FILE* f = std::fopen(argv[2], "wb");
    if (!f || std::fwrite(out.data(), 1, out.size(), f) != out.size() || std::fclose(f) != 0) {
        std::perror(argv[2]);
        return 2;
    }
    return 0;
}
