"""Gigabit Ethernet: a byte-wide MAC (:mod:`.mac`, FCS by :mod:`.crc32`) and its RGMII
adapter (:mod:`.rgmii`), and a UDP endpoint over it with ARP and IPv4 (:mod:`.udp`)."""
