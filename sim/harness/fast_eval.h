// The model's evaluation without Vtop::eval()'s housekeeping, shared by the harnesses.
//
// Vtop::eval() wraps the evaluation in housekeeping for features Amaranth designs do not use: it
// deletes garbage of SystemVerilog class objects and serves messages from other model threads,
// and the mutexes that takes were a fifth of the run time of the CRC kernel. The evaluation
// itself is this function of the root instance, internal to Verilator (5.x), so it is declared
// weak: should a Verilator not have it, the address is null and fast_eval() calls eval().
// Call Vtop::eval() once first (the harnesses do, in reset): it does the one-time set-up.
#pragma once

#include "Vtop.h"

class Vtop___024root;
void Vtop___024root___eval(Vtop___024root* vlSelf) __attribute__((weak));

inline void fast_eval(Vtop* top) {
    if (Vtop___024root___eval) {
        Vtop___024root___eval(top->rootp);
    } else {
        top->eval();
    }
}
