// The virtual boards' model (board_harness.cpp, udp_harness.cpp): the Verilated top, held in
// reset for a number of cycles with its inputs idle, then clocked a cycle at a time.
#pragma once

#include <cstdint>
#include <memory>

#include "Vtop.h"
#include "fast_eval.h"
#include "verilated.h"

struct ClockedBoard {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vtop> top;
    uint64_t cycles = 0;

    // `idle(top)` sets the top's inputs to their idle values before reset.
    template <class Idle>
    ClockedBoard(int reset_cycles, Idle idle) : ctx(new VerilatedContext), top(new Vtop{ctx.get()}) {
        top->clk = 0;
        top->rst = 1;
        idle(top.get());
        top->eval();
        for (int i = 0; i < reset_cycles; i++) tick();
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
