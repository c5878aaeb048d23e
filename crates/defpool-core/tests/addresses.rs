//! Payout address parsing against real addresses of every built-in coin and network.
//!
//! Each vector names its source. Expected scripts are the ones the sources give, or follow from
//! the hash the source gives (P2PKH `76a914{hash}88ac`, P2SH `a914{hash}87`).

use defpool_core::address::{
    parse_payout_address, parse_payout_address_in, AddressError, AddressKind, Encoding,
    NotPayableReason, PayoutAddress,
};
use defpool_core::{CoinRegistry, CoinSpec, Network};
use proptest::prelude::*;

// Every test sits in `address`, so that `cargo test address` selects them all.
mod address {
    use super::*;
    use Network::{Mainnet, Regtest, Testnet};

    fn reg() -> CoinRegistry {
        CoinRegistry::builtin()
    }

    fn coin<'a>(reg: &'a CoinRegistry, ticker: &str) -> &'a CoinSpec {
        reg.by_ticker(ticker).unwrap()
    }

    fn parse(ticker: &str, network: Network, text: &str) -> Result<PayoutAddress, AddressError> {
        let reg = reg();
        parse_payout_address(text, coin(&reg, ticker), network)
    }

    fn parse_in(ticker: &str, network: Network, text: &str) -> Result<PayoutAddress, AddressError> {
        let reg = reg();
        parse_payout_address_in(&reg, text, coin(&reg, ticker), network)
    }

    #[track_caller]
    fn ok(ticker: &str, network: Network, text: &str, kind: AddressKind, script_hex: &str) {
        let parsed = parse(ticker, network, text)
            .unwrap_or_else(|e| panic!("{ticker} {network} `{text}` refused: {e}"));
        assert_eq!(parsed.kind, kind, "{text}");
        assert_eq!(hex::encode(&parsed.script_pubkey), script_hex, "{text}");
    }

    #[track_caller]
    fn err(ticker: &str, network: Network, text: &str) -> AddressError {
        match parse(ticker, network, text) {
            Ok(a) => panic!("{ticker} {network} `{text}` accepted as {:?}", a.kind),
            Err(e) => e,
        }
    }

    const P2WPKH_751E: &str = "0014751e76e8199196d454941c45d1b3a323f1433bd6";
    const P2WSH_1863: &str = "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262";

    #[test]
    fn btc_mainnet() {
        use AddressKind::*;
        // The genesis block's coinbase output key, hash160 62e907b1…
        ok(
            "BTC",
            Mainnet,
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
            P2pkh,
            "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac",
        );
        // Bitcoin Core's base58 key test vectors (base58_keys_valid.json).
        ok(
            "BTC",
            Mainnet,
            "1AGNa15ZQXAZUgFiqJ2i7Z2DPU2J6hW62i",
            P2pkh,
            "76a91465a16059864a2fdbc7c99a4723a8395bc6f188eb88ac",
        );
        ok(
            "BTC",
            Mainnet,
            "3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou",
            P2sh,
            "a91474f209f6ea907e2ea48f74fae05782ae8a66525787",
        );
        // BIP173 examples: P2WPKH (upper case is valid), P2WSH.
        ok(
            "BTC",
            Mainnet,
            "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
            Segwit { version: 0 },
            P2WPKH_751E,
        );
        ok(
            "BTC",
            Mainnet,
            "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
            Segwit { version: 0 },
            P2WSH_1863,
        );
        // BIP350 valid vector: taproot.
        ok(
            "BTC",
            Mainnet,
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
            Segwit { version: 1 },
            "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
        );
        // The canonical text of a segwit address is lower case.
        let parsed = parse(
            "BTC",
            Mainnet,
            "  BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4\n",
        )
        .unwrap();
        assert_eq!(parsed.text, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4");
        assert_eq!(parsed.to_string(), parsed.text);
    }

    #[test]
    fn btc_testnet_and_regtest() {
        use AddressKind::*;
        // Bitcoin Core's base58 key test vectors: testnet P2PKH and P2SH (regtest shares them).
        for net in [Testnet, Regtest] {
            ok(
                "BTC",
                net,
                "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs",
                P2pkh,
                "76a91453c0307d6851aa0ce7825ba883c6bd9ad242b48688ac",
            );
            ok(
                "BTC",
                net,
                "2N2JD6wb56AfK4tfmM6PwdVmoYk2dCKf4Br",
                P2sh,
                "a9146349a418fc4578d10a372b54b45c280cc8c4382f87",
            );
        }
        // BIP173 examples and BIP350 valid vectors.
        ok(
            "BTC",
            Testnet,
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
            Segwit { version: 0 },
            P2WPKH_751E,
        );
        ok(
            "BTC",
            Testnet,
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            Segwit { version: 0 },
            P2WSH_1863,
        );
        ok(
            "BTC",
            Testnet,
            "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
            Segwit { version: 0 },
            "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
        );
        ok(
            "BTC",
            Testnet,
            "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
            Segwit { version: 1 },
            "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
        );
        // The BIP173 P2WPKH program under the regtest HRP, as rust-bitcoin's tests use it.
        ok(
            "BTC",
            Regtest,
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
            Segwit { version: 0 },
            P2WPKH_751E,
        );
    }

    #[test]
    fn segwit_versions_without_spending_rules_are_not_payable() {
        // BIP350 valid vectors: well formed, but v1 with 40 bytes, v2 and v16 have no rules yet.
        for (text, version, program_len) in [
            (
                "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
                1,
                40,
            ),
            ("BC1SW50QGDZ25J", 16, 2),
            ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", 2, 16),
        ] {
            let e = err("BTC", Mainnet, text);
            assert_eq!(
                e,
                AddressError::NotPayable(NotPayableReason::UndefinedWitnessProgram {
                    version,
                    program_len
                }),
                "{text}"
            );
            assert!(e.to_string().contains("anyone could take"), "{e}");
        }
    }

    #[test]
    fn bip350_invalid_addresses_are_refused_with_the_cause() {
        use AddressError::*;
        // BIP350 invalid vectors.
        let bech32_for_v1 = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd";
        let e = err("BTC", Mainnet, bech32_for_v1);
        assert_eq!(
            e,
            WrongChecksumVariant {
                version: 1,
                expected: Encoding::Bech32m,
                found: Encoding::Bech32
            }
        );
        assert_eq!(
            e.to_string(),
            "witness v1 addresses use the bech32m checksum, not bech32"
        );
        assert!(matches!(
            err(
                "BTC",
                Testnet,
                "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf"
            ),
            WrongChecksumVariant { version: 2, .. }
        ));
        assert!(matches!(
            err(
                "BTC",
                Mainnet,
                "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL"
            ),
            WrongChecksumVariant { version: 16, .. }
        ));
        for (net, text) in [
            (Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh"),
            (
                Testnet,
                "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",
            ),
        ] {
            assert_eq!(
                err("BTC", net, text),
                WrongChecksumVariant {
                    version: 0,
                    expected: Encoding::Bech32,
                    found: Encoding::Bech32m
                },
                "{text}"
            );
        }
        assert_eq!(
            err(
                "BTC",
                Mainnet,
                "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4"
            ),
            InvalidCharacter {
                character: 'o',
                position: 59,
                encoding: Encoding::Bech32
            }
        );
        assert_eq!(
            err(
                "BTC",
                Mainnet,
                "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R"
            ),
            InvalidWitnessVersion(17)
        );
        // Wrong program lengths: 1 byte, 41 bytes, 16 bytes for v0.
        for (text, len) in [
            ("bc1pw5dgrnzv", 1),
            (
                "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
                41,
            ),
            ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", 16),
        ] {
            match err("BTC", Mainnet, text) {
                BadLength {
                    what: "the witness program",
                    len: got,
                    ..
                } => assert_eq!(got, len, "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
        assert_eq!(
            err(
                "BTC",
                Testnet,
                "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq"
            ),
            MixedCase {
                encoding: Encoding::Bech32
            }
        );
        for (net, text) in [
            (
                Mainnet,
                "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",
            ),
            (
                Testnet,
                "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",
            ),
        ] {
            assert_eq!(
                err("BTC", net, text),
                InvalidPadding {
                    encoding: Encoding::Bech32
                },
                "{text}"
            );
        }
        // Empty data part.
        err("BTC", Mainnet, "bc1gmk9yu");
        // Unknown HRP.
        assert_eq!(
            err(
                "BTC",
                Mainnet,
                "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut"
            ),
            UnknownPrefix {
                prefix: "tc".into(),
                encoding: Encoding::Bech32,
                coin: "BTC".parse().unwrap(),
                network: Mainnet,
                expected: "bc1".into(),
            }
        );
    }

    #[test]
    fn typos_are_bad_checksums() {
        // The genesis address with its last character changed.
        let e = err("BTC", Mainnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb");
        assert_eq!(
            e,
            AddressError::BadChecksum {
                encoding: Encoding::Base58Check
            }
        );
        assert!(e.to_string().starts_with("bad Base58Check checksum"), "{e}");
        // The BIP173 P2WPKH example with one character changed.
        assert_eq!(
            err("BTC", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"),
            AddressError::BadChecksum {
                encoding: Encoding::Bech32
            }
        );
        assert_eq!(
            err("BTC", Mainnet, "bc1Qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            AddressError::MixedCase {
                encoding: Encoding::Bech32
            }
        );
        // A base58 character that does not exist.
        assert!(matches!(
            err("BTC", Mainnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfN0"),
            AddressError::InvalidCharacter {
                character: '0',
                position: 33,
                encoding: Encoding::Base58Check
            }
        ));
        assert_eq!(err("BTC", Mainnet, "  "), AddressError::Empty);
        assert!(matches!(
            err("BTC", Mainnet, "1A1zP1eP5QGefi2DMPTféTL5SLmv7DivfNa"),
            AddressError::NotAscii {
                character: 'é',
                position: 20
            }
        ));
        assert!(matches!(
            err("BTC", Mainnet, &"1".repeat(300)),
            AddressError::TooLong { len: 300, .. }
        ));
        // A Base58Check string of the wrong size: a private key in WIF (Bitcoin Core's vectors).
        assert!(matches!(
            err(
                "BTC",
                Mainnet,
                "5Kd3NBUAdUnhyzenEwVLy9pBKxSwXvE9FMPyR4UKZvpe6E3AgLr"
            ),
            AddressError::BadLength { len: 33, .. }
        ));
    }

    #[test]
    fn addresses_of_another_network_are_named() {
        let e = err("BTC", Testnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa");
        assert_eq!(
            e,
            AddressError::WrongNetwork {
                coin: "BTC".parse().unwrap(),
                expected: Testnet,
                found: vec![Mainnet],
            }
        );
        assert_eq!(
            e.to_string(),
            "wrong network: this is a BTC mainnet address, but the pool runs on BTC testnet"
        );
        assert!(matches!(
            err("BTC", Mainnet, "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs"),
            AddressError::WrongNetwork { found, .. } if found == [Testnet, Regtest]
        ));
        assert!(matches!(
            err("BTC", Mainnet, "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"),
            AddressError::WrongNetwork { found, .. } if found == [Testnet]
        ));
        assert!(matches!(
            err("BTC", Regtest, "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"),
            AddressError::WrongNetwork { found, .. } if found == [Mainnet]
        ));
        assert!(matches!(
            err("LTC", Testnet, "LT2KVaAy1ppRuxRgrS5RNU3vBsy7RibPeA"),
            AddressError::WrongNetwork { found, .. } if found == [Mainnet]
        ));
        assert!(matches!(
            err("DOGE", Mainnet, "nbpzakKSn16ZAp7nXuu9tELBrmiVpEyV1Q"),
            // 0x71 is DOGE testnet's prefix and, on Dogecoin's development branch, regtest's.
            AddressError::WrongNetwork { found, .. } if found == [Testnet, Regtest]
        ));
        // Wrong-network errors stand even when the registry is consulted.
        assert!(matches!(
            parse_in("BTC", Testnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
            Err(AddressError::WrongNetwork { .. })
        ));
    }

    #[test]
    fn addresses_of_another_coin_are_refused_and_named_with_the_registry() {
        let btc = "BTC".parse().unwrap();
        // Litecoin addresses given for Bitcoin.
        let e = err("BTC", Mainnet, "LT2KVaAy1ppRuxRgrS5RNU3vBsy7RibPeA");
        assert_eq!(
            e,
            AddressError::UnknownVersion {
                version: 0x30,
                coin: btc,
                network: Mainnet
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown version byte 0x30: not a BTC mainnet address"
        );
        let e = err(
            "BTC",
            Mainnet,
            "ltc1qytnqzjknvv03jwfgrsmzt0ycmwqgl0asjnaxwu",
        );
        assert_eq!(
            e.to_string(),
            "unknown prefix `ltc`: BTC mainnet bech32 addresses start with `bc1`"
        );
        for text in [
        "LT2KVaAy1ppRuxRgrS5RNU3vBsy7RibPeA",
        "MHrYRxAiMNBTku3eoDHwhA1LQGDjUStZW2",
        "ltc1qytnqzjknvv03jwfgrsmzt0ycmwqgl0asjnaxwu",
        "ltcmweb1qq20e2arnhvxw97katjkmsd35agw3capxjkrkh7dk8d30rczm8ypxuq329nwh2twmchhqn3jqh7ua4ps539f6aazh79jy76urqht4qa59ts3at6gf",
    ] {
        let e = parse_in("BTC", Mainnet, text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrong coin: this is a LTC mainnet address, not a BTC one",
            "{text}"
        );
    }
        // A legacy address shared by the three SHA-256 coins, given for Dogecoin.
        let e = parse_in("DOGE", Mainnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa").unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrong coin: this is a BCH, BSV or BTC mainnet address, not a DOGE one"
        );
        // Dogecoin for Bitcoin; testnet found when the same network has no match.
        assert!(matches!(
            parse_in("BTC", Mainnet, "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"),
            Err(AddressError::WrongCoin { found, found_network: Mainnet, .. })
                if found == ["DOGE".parse().unwrap()]
        ));
        assert!(matches!(
            parse_in("BTC", Mainnet, "nbpzakKSn16ZAp7nXuu9tELBrmiVpEyV1Q"),
            Err(AddressError::WrongCoin {
                found_network: Testnet,
                ..
            })
        ));
        // A typo stays a typo.
        assert_eq!(
            parse_in("BTC", Mainnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb").unwrap_err(),
            AddressError::BadChecksum {
                encoding: Encoding::Base58Check
            }
        );
        // A valid address is returned as is.
        assert!(parse_in(
            "LTC",
            Mainnet,
            "ltc1qytnqzjknvv03jwfgrsmzt0ycmwqgl0asjnaxwu"
        )
        .is_ok());
    }

    /// bitcoincash.org spec/cashaddr.md, "Examples of address translation".
    const CASHADDR_TRANSLATIONS: [(&str, &str); 6] = [
        (
            "1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggu",
            "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a",
        ),
        (
            "1KXrWXciRDZUpQwQmuM1DbwsKDLYAYsVLR",
            "bitcoincash:qr95sy3j9xwd2ap32xkykttr4cvcu7as4y0qverfuy",
        ),
        (
            "16w1D5WRVKJuZUsSRzdLp9w3YGcgoxDXb",
            "bitcoincash:qqq3728yw0y47sqn6l2na30mcw6zm78dzqre909m2r",
        ),
        (
            "3CWFddi6m4ndiGyKqzYvsFYagqDLPVMTzC",
            "bitcoincash:ppm2qsznhks23z7629mms6s4cwef74vcwvn0h829pq",
        ),
        (
            "3LDsS579y7sruadqu11beEJoTjdFiFCdX4",
            "bitcoincash:pr95sy3j9xwd2ap32xkykttr4cvcu7as4yc93ky28e",
        ),
        (
            "31nwvkZwyPdgzjBJZXfDmSWsC4ZLKpYyUw",
            "bitcoincash:pqq3728yw0y47sqn6l2na30mcw6zm78dzq5ucqzc37",
        ),
    ];

    #[test]
    fn bch_cashaddr_and_legacy_pay_the_same_script() {
        for (legacy, cashaddr) in CASHADDR_TRANSLATIONS {
            let old = parse("BCH", Mainnet, legacy).unwrap();
            let new = parse("BCH", Mainnet, cashaddr).unwrap();
            assert_eq!(old.script_pubkey, new.script_pubkey, "{cashaddr}");
            assert_eq!(new.text, cashaddr);
            assert_eq!(old.text, legacy);
            let p2sh = cashaddr.starts_with("bitcoincash:p");
            assert_eq!(
                (old.kind, new.kind),
                if p2sh {
                    (AddressKind::P2sh, AddressKind::CashAddrP2sh)
                } else {
                    (AddressKind::P2pkh, AddressKind::CashAddrP2pkh)
                }
            );
            // Without the prefix, and in upper case, it is the same address.
            let bare = cashaddr.split_once(':').unwrap().1;
            assert_eq!(parse("BCH", Mainnet, bare).unwrap(), new);
            assert_eq!(
                parse("BCH", Mainnet, &cashaddr.to_uppercase()).unwrap(),
                new
            );
            assert_eq!(parse("BCH", Mainnet, &bare.to_uppercase()).unwrap(), new);
        }
        ok(
            "BCH",
            Mainnet,
            "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a",
            AddressKind::CashAddrP2pkh,
            "76a91476a04053bda0a88bda5177b86a15c3b29f55987388ac",
        );
        // Spec "Larger test vectors", 20-byte rows.
        ok(
            "BCH",
            Mainnet,
            "bitcoincash:qr6m7j9njldwwzlg9v7v53unlr4jkmx6eylep8ekg2",
            AddressKind::CashAddrP2pkh,
            "76a914f5bf48b397dae70be82b3cca4793f8eb2b6cdac988ac",
        );
        ok(
            "BCH",
            Testnet,
            "bchtest:pr6m7j9njldwwzlg9v7v53unlr4jkmx6eyvwc0uz5t",
            AddressKind::CashAddrP2sh,
            "a914f5bf48b397dae70be82b3cca4793f8eb2b6cdac987",
        );
        // Legacy testnet addresses are BCH testnet addresses too.
        ok(
            "BCH",
            Testnet,
            "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs",
            AddressKind::P2pkh,
            "76a91453c0307d6851aa0ce7825ba883c6bd9ad242b48688ac",
        );
    }

    #[test]
    fn bch_cashaddr_refusals() {
        use AddressError::*;
        let good = "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a";
        // One character changed.
        assert_eq!(
            err(
                "BCH",
                Mainnet,
                "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6e"
            ),
            BadChecksum {
                encoding: Encoding::CashAddr
            }
        );
        assert_eq!(
            err("BCH", Mainnet, "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6e"),
            BadChecksum {
                encoding: Encoding::CashAddr
            }
        );
        assert_eq!(
            err(
                "BCH",
                Mainnet,
                "bitcoincash:Qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"
            ),
            MixedCase {
                encoding: Encoding::CashAddr
            }
        );
        assert_eq!(
            err(
                "BCH",
                Mainnet,
                "BITCOINCASH:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"
            ),
            MixedCase {
                encoding: Encoding::CashAddr
            }
        );
        assert!(matches!(
            err(
                "BCH",
                Mainnet,
                "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdxba"
            ),
            InvalidCharacter {
                character: 'b',
                position: 52,
                encoding: Encoding::CashAddr
            }
        ));
        // A mainnet address on testnet, with the prefix and without: the checksum names the network.
        let bare = good.split_once(':').unwrap().1;
        for text in [good, bare] {
            assert_eq!(
                err("BCH", Testnet, text),
                WrongNetwork {
                    coin: "BCH".parse().unwrap(),
                    expected: Testnet,
                    found: vec![Mainnet]
                },
                "{text}"
            );
        }
        assert!(matches!(
            err("BCH", Mainnet, "bchtest:pr6m7j9njldwwzlg9v7v53unlr4jkmx6eyvwc0uz5t"),
            WrongNetwork { found, .. } if found == [Testnet]
        ));
        // The spec's `pref:` vector: a valid checksum under a prefix BCH does not use.
        assert_eq!(
            err(
                "BCH",
                Mainnet,
                "pref:pr6m7j9njldwwzlg9v7v53unlr4jkmx6ey65nvtks5"
            )
            .to_string(),
            "unknown prefix `pref`: BCH mainnet CashAddr addresses start with `bitcoincash:`"
        );
        // Formats Bitcoin Cash does not have, and CashAddr for coins that do not have it.
        let e = err("BCH", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4");
        assert_eq!(e.to_string(), "BCH mainnet has no bech32 addresses");
        let e = err("BTC", Mainnet, good);
        assert_eq!(e.to_string(), "BTC mainnet has no CashAddr addresses");
        assert!(matches!(
            parse_in("BTC", Mainnet, good),
            Err(WrongCoin { found, .. }) if found == ["BCH".parse().unwrap()]
        ));
        assert!(matches!(
            parse_in("BSV", Mainnet, bare),
            Err(WrongCoin { found, .. }) if found == ["BCH".parse().unwrap()]
        ));
        assert!(matches!(
            parse_in("BCH", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            Err(WrongCoin { found, .. }) if found == ["BTC".parse().unwrap()]
        ));
    }

    #[test]
    fn bsv_legacy() {
        // Bitcoin SV keeps Bitcoin's legacy formats (and its genesis block).
        ok(
            "BSV",
            Mainnet,
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
            AddressKind::P2pkh,
            "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac",
        );
        ok(
            "BSV",
            Mainnet,
            "3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou",
            AddressKind::P2sh,
            "a91474f209f6ea907e2ea48f74fae05782ae8a66525787",
        );
        ok(
            "BSV",
            Testnet,
            "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs",
            AddressKind::P2pkh,
            "76a91453c0307d6851aa0ce7825ba883c6bd9ad242b48688ac",
        );
        assert_eq!(
            err("BSV", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").to_string(),
            "BSV mainnet has no bech32 addresses"
        );
        assert_eq!(
            err(
                "BSV",
                Mainnet,
                "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"
            )
            .to_string(),
            "BSV mainnet has no CashAddr addresses"
        );
    }

    #[test]
    fn ltc_all_networks() {
        use AddressKind::*;
        // Litecoin Core's key_io_valid.json.
        ok(
            "LTC",
            Mainnet,
            "LT2KVaAy1ppRuxRgrS5RNU3vBsy7RibPeA",
            P2pkh,
            "76a914558dbca7118cd5894502767c7b2ffc21a22f54db88ac",
        );
        ok(
            "LTC",
            Mainnet,
            "MHrYRxAiMNBTku3eoDHwhA1LQGDjUStZW2",
            P2sh,
            "a9146d328a5b2a20d943a641c8d29b6cc3c2d2df85d387",
        );
        ok(
            "LTC",
            Testnet,
            "mwXn5Vhicdav8Av3KMokx4YNuHoGRKxtWs",
            P2pkh,
            "76a914afa9e672141e283dfbcc1cf28f3793a856d3878488ac",
        );
        ok(
            "LTC",
            Testnet,
            "QXaUgLHkZcbJb2j5XgMYzY8cF9YM48Y81Z",
            P2sh,
            "a9147860667e60a6545e18e541984094b29c9c46991b87",
        );
        ok(
            "LTC",
            Regtest,
            "mpWvR79tSrA5xeziB6mjNYWdaVRwBpgnUP",
            P2pkh,
            "76a91462b790654f809d32202587c6a43456ffc1965d8388ac",
        );
        ok(
            "LTC",
            Regtest,
            "QgDNrG4nJpE4VV7PcFMFhkTgwAHWxWS7pj",
            P2sh,
            "a914d71bee7a1395c10c9ca9a7f53ac086b53e74369d87",
        );
        // Litecoin's legacy P2SH version 0x05 ("3…") is still accepted (see coins.toml).
        ok(
            "LTC",
            Mainnet,
            "3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou",
            P2sh,
            "a91474f209f6ea907e2ea48f74fae05782ae8a66525787",
        );
        // Trust Wallet's wallet-core Litecoin tests (P2WPKH of a known key).
        let a = parse(
            "LTC",
            Mainnet,
            "ltc1qytnqzjknvv03jwfgrsmzt0ycmwqgl0asjnaxwu",
        )
        .unwrap();
        assert_eq!(a.kind, Segwit { version: 0 });
        assert_eq!(&a.script_pubkey[..2], &[0x00, 0x14]);
        assert_eq!(a.script_pubkey.len(), 22);
        // Litecoin Core's MWEB tests (libmw Test_PegOutCoin.cpp): a testnet P2WPKH.
        let a = parse(
            "LTC",
            Testnet,
            "tltc1qh50sy0823vxn4l9zk2820w4fuj0q4fgv48ma6c",
        )
        .unwrap();
        assert_eq!(a.kind, Segwit { version: 0 });
        assert_eq!(a.script_pubkey.len(), 22);
        // ltcsuite/lnd's btcwallet tests: regtest P2WPKH, and a taproot address with its script.
        let a = parse(
            "LTC",
            Regtest,
            "rltc1qlkp8904tzjyd8qwzjl550k040qz08ulaeajgcn",
        )
        .unwrap();
        assert_eq!(a.kind, Segwit { version: 0 });
        ok(
            "LTC",
            Regtest,
            "rltc1p7p5xsny3gyp8xx8wm9vdejl57lm5suqwrkjnx9trpkp2xckk4zrsa9ngs2",
            Segwit { version: 1 },
            "5120f068684c9141027318eed958dccbf4f7f748700e1da53315630d82a362d6a887",
        );
        // Networks of Litecoin apart.
        assert!(matches!(
            err("LTC", Mainnet, "tltc1qh50sy0823vxn4l9zk2820w4fuj0q4fgv48ma6c"),
            AddressError::WrongNetwork { found, .. } if found == [Testnet]
        ));
        assert!(matches!(
            err("LTC", Testnet, "rltc1qlkp8904tzjyd8qwzjl550k040qz08ulaeajgcn"),
            AddressError::WrongNetwork { found, .. } if found == [Regtest]
        ));
        // A Bitcoin segwit address given for Litecoin.
        assert!(matches!(
            parse_in("LTC", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            Err(AddressError::WrongCoin { found, .. }) if found == ["BTC".parse().unwrap()]
        ));
    }

    /// Litecoin Core's wallet tests (scriptpubkeyman_tests.cpp, the MWEB keychain's change address).
    const LTC_MWEB_MAINNET: &str = "ltcmweb1qq20e2arnhvxw97katjkmsd35agw3capxjkrkh7dk8d30rczm8ypxuq329nwh2twmchhqn3jqh7ua4ps539f6aazh79jy76urqht4qa59ts3at6gf";

    /// Structurally synthetic: 66 bytes (a scan and a spend public key, as MWEB stealth addresses
    /// carry) bech32-encoded under the `tmweb` HRP Litecoin's testnet and regtest use. No daemon
    /// produced it.
    fn synthetic_tmweb() -> String {
        let hrp = bech32::Hrp::parse("tmweb").unwrap();
        let mut data = vec![0u8]; // version 0 as a first 5-bit group, as real ones start with `qq`
        data.extend([0x02; 33]);
        data.extend([0x03; 33]);
        bech32::encode::<bech32::Bech32>(hrp, &data).unwrap()
    }

    #[test]
    fn ltc_mweb_addresses_are_refused_as_not_payable() {
        let not_payable = AddressError::NotPayable(NotPayableReason::Mweb);
        let e = err("LTC", Mainnet, LTC_MWEB_MAINNET);
        assert_eq!(e, not_payable);
        assert!(
            e.to_string()
                .starts_with("not payable: MWEB addresses cannot receive a coinbase"),
            "{e}"
        );
        // Upper case is the same address.
        assert_eq!(
            err("LTC", Mainnet, &LTC_MWEB_MAINNET.to_uppercase()),
            not_payable
        );
        let tmweb = synthetic_tmweb();
        assert!(tmweb.len() > 90, "{tmweb}");
        assert_eq!(err("LTC", Regtest, &tmweb), not_payable);
        assert_eq!(err("LTC", Testnet, &tmweb), not_payable);
        // Even given for the wrong network, it is refused for what it is.
        assert_eq!(err("LTC", Mainnet, &tmweb), not_payable);
        // A mistyped MWEB address is a typo first.
        let typo = LTC_MWEB_MAINNET.replace("qa59ts3at6gf", "qa59ts3at6gg");
        assert_eq!(
            err("LTC", Mainnet, &typo),
            AddressError::BadChecksum {
                encoding: Encoding::Bech32
            }
        );
        // For Bitcoin it is somebody else's address; with the registry, Litecoin's.
        assert!(matches!(
            err("BTC", Mainnet, LTC_MWEB_MAINNET),
            AddressError::UnknownPrefix { .. }
        ));
    }

    #[test]
    fn doge_mainnet_and_testnet() {
        use AddressKind::*;
        // A public Dogecoin address (used as a fixture by address validators).
        let a = parse("DOGE", Mainnet, "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L").unwrap();
        assert_eq!(a.kind, P2pkh);
        assert_eq!(a.text, "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L");
        // Dogecoin Core's key_io_valid.json.
        ok(
            "DOGE",
            Mainnet,
            "DEQU7G2Chw4r1gSKZt2GfKBpGbkbQSwp3S",
            P2pkh,
            "76a91465a16059864a2fdbc7c99a4723a8395bc6f188eb88ac",
        );
        ok(
            "DOGE",
            Mainnet,
            "A36czoRusM4VxnNiEjTaaDcMyr4GB73xw1",
            P2sh,
            "a91474f209f6ea907e2ea48f74fae05782ae8a66525787",
        );
        ok(
            "DOGE",
            Mainnet,
            "9tg8sLnB9okjuNSdgtAWrNPcgijs1yMwBE",
            P2sh,
            "a914188f91a931947eddd7432d6e614387e32b24470987",
        );
        ok(
            "DOGE",
            Testnet,
            "nbpzakKSn16ZAp7nXuu9tELBrmiVpEyV1Q",
            P2pkh,
            "76a91453c0307d6851aa0ce7825ba883c6bd9ad242b48688ac",
        );
        ok(
            "DOGE",
            Testnet,
            "2N2JD6wb56AfK4tfmM6PwdVmoYk2dCKf4Br",
            P2sh,
            "a9146349a418fc4578d10a372b54b45c280cc8c4382f87",
        );
        assert_eq!(
            err(
                "DOGE",
                Mainnet,
                "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
            )
            .to_string(),
            "DOGE mainnet has no bech32 addresses"
        );
        assert!(matches!(
            err("DOGE", Mainnet, "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7M"),
            AddressError::BadChecksum { .. }
        ));
    }

    /// Every (coin, network) pair of the built-in registry.
    fn all_networks() -> Vec<(String, Network)> {
        reg()
            .iter()
            .flat_map(|c| {
                c.networks
                    .keys()
                    .map(|n| (c.ticker.to_string(), *n))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn p2pkh_hex(hash: &[u8]) -> String {
        format!("76a914{}88ac", hex::encode(hash))
    }

    fn p2sh_hex(hash: &[u8]) -> String {
        format!("a914{}87", hex::encode(hash))
    }

    /// A valid address of each format the network has, for `hash`.
    fn valid_addresses(ticker: &str, network: Network, hash: &[u8; 20]) -> Vec<String> {
        let reg = reg();
        let format = &coin(&reg, ticker).network(network).unwrap().address;
        let mut out = Vec::new();
        for &v in format.p2pkh.iter().chain(&format.p2sh) {
            out.push(bs58::encode(hash).with_check_version(v).into_string());
        }
        if let Some(hrp) = &format.bech32_hrp {
            let hrp = bech32::Hrp::parse(hrp).unwrap();
            out.push(bech32::segwit::encode_v0(hrp, hash).unwrap());
            let mut program = hash.to_vec();
            program.extend_from_slice(&hash[..12]);
            out.push(bech32::segwit::encode_v1(hrp, &program).unwrap());
        }
        out
    }

    proptest! {
        #[test]
        fn base58check_of_every_version_byte_parses_back(
            hash in prop::array::uniform20(any::<u8>()),
            case in prop::sample::select(all_networks()),
        ) {
            let (ticker, network) = case;
            let reg = reg();
            let spec = coin(&reg, &ticker);
            let format = &spec.network(network).unwrap().address;
            for &v in &format.p2pkh {
                let text = bs58::encode(&hash).with_check_version(v).into_string();
                let parsed = parse_payout_address(&text, spec, network).unwrap();
                prop_assert_eq!(parsed.kind, AddressKind::P2pkh);
                prop_assert_eq!(hex::encode(&parsed.script_pubkey), p2pkh_hex(&hash));
                prop_assert_eq!(parsed.text, text);
            }
            for &v in &format.p2sh {
                let text = bs58::encode(&hash).with_check_version(v).into_string();
                let parsed = parse_payout_address(&text, spec, network).unwrap();
                prop_assert_eq!(parsed.kind, AddressKind::P2sh);
                prop_assert_eq!(hex::encode(&parsed.script_pubkey), p2sh_hex(&hash));
            }
        }

        #[test]
        fn segwit_of_every_hrp_parses_back(
            hash in prop::array::uniform20(any::<u8>()),
            long in prop::array::uniform32(any::<u8>()),
            case in prop::sample::select(all_networks()),
        ) {
            let (ticker, network) = case;
            let reg = reg();
            let spec = coin(&reg, &ticker);
            let Some(hrp) = &spec.network(network).unwrap().address.bech32_hrp else {
                return Ok(());
            };
            let hrp = bech32::Hrp::parse(hrp).unwrap();
            let text = bech32::segwit::encode_v0(hrp, &hash).unwrap();
            let parsed = parse_payout_address(&text, spec, network).unwrap();
            prop_assert_eq!(parsed.kind, AddressKind::Segwit { version: 0 });
            prop_assert_eq!(hex::encode(&parsed.script_pubkey), format!("0014{}", hex::encode(hash)));
            let text = bech32::segwit::encode_v0(hrp, &long).unwrap();
            let parsed = parse_payout_address(&text, spec, network).unwrap();
            prop_assert_eq!(hex::encode(&parsed.script_pubkey), format!("0020{}", hex::encode(long)));
            let text = bech32::segwit::encode_v1(hrp, &long).unwrap();
            let parsed = parse_payout_address(&text, spec, network).unwrap();
            prop_assert_eq!(parsed.kind, AddressKind::Segwit { version: 1 });
            prop_assert_eq!(hex::encode(&parsed.script_pubkey), format!("5120{}", hex::encode(long)));
        }

        #[test]
        fn any_single_character_substitution_is_rejected(
            hash in prop::array::uniform20(any::<u8>()),
            case in prop::sample::select(all_networks()),
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            replacement in prop::sample::select(
                "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0OIl:"
                    .chars()
                    .collect::<Vec<_>>()
            ),
        ) {
            let (ticker, network) = case;
            let reg = reg();
            let spec = coin(&reg, &ticker);
            let addresses = valid_addresses(&ticker, network, &hash);
            let text = which.get(&addresses);
            prop_assert!(parse_payout_address(text, spec, network).is_ok());
            let i = at.index(text.len());
            prop_assume!(text.as_bytes()[i] as char != replacement);
            let mut mutated = text.clone();
            mutated.replace_range(i..=i, &replacement.to_string());
            let result = parse_payout_address(&mutated, spec, network);
            prop_assert!(result.is_err(), "`{}` (from `{}`) accepted", mutated, text);
        }
    }

    #[test]
    fn every_single_substitution_of_real_addresses_is_rejected() {
        let alphabet: Vec<char> = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0OIl:"
            .chars()
            .collect();
        let cases = [
            ("BTC", Mainnet, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
            ("BTC", Mainnet, "3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou"),
            ("BTC", Mainnet, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            (
                "BTC",
                Mainnet,
                "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
            ),
            ("BCH", Mainnet, CASHADDR_TRANSLATIONS[0].1),
            ("BCH", Mainnet, "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"),
            (
                "BCH",
                Testnet,
                "bchtest:pr6m7j9njldwwzlg9v7v53unlr4jkmx6eyvwc0uz5t",
            ),
            (
                "LTC",
                Mainnet,
                "ltc1qytnqzjknvv03jwfgrsmzt0ycmwqgl0asjnaxwu",
            ),
            ("LTC", Mainnet, "MHrYRxAiMNBTku3eoDHwhA1LQGDjUStZW2"),
            ("DOGE", Mainnet, "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"),
        ];
        let reg = reg();
        for (ticker, network, text) in cases {
            let spec = coin(&reg, ticker);
            assert!(parse_payout_address(text, spec, network).is_ok(), "{text}");
            for i in 0..text.len() {
                for &c in &alphabet {
                    if text.as_bytes()[i] as char == c {
                        continue;
                    }
                    let mut mutated = text.to_string();
                    mutated.replace_range(i..=i, &c.to_string());
                    assert!(
                        parse_payout_address(&mutated, spec, network).is_err(),
                        "`{mutated}` (from `{text}`) accepted"
                    );
                }
            }
        }
    }
}
